import pytest
import torch

from tunelab.training.data import collate
from tunelab.training.losses import IGNORE_INDEX, completion_loss, positions_to_keep


def test_completion_loss_by_hand():
    # one row, vocab 2: positions 0..2, labels only on the last token (target 1)
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    # position 1 predicts token 2: log-softmax([2, 0])[1] = -log(1 + e^2)
    expected = torch.log1p(torch.exp(torch.tensor(2.0)))
    assert completion_loss(logits, labels) == pytest.approx(float(expected))
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])  # two labelled tokens: the mean
    first = torch.log(torch.tensor(2.0))  # position 0 predicts token 1 (=0) with logits [0, 0]
    assert completion_loss(logits, labels) == pytest.approx(float((first + expected) / 2))


def test_positions_to_keep():
    labels = torch.tensor([[IGNORE_INDEX] * 5 + [7, 8], [IGNORE_INDEX] * 3 + [4, 5, 6, 9]])
    assert positions_to_keep(labels) == 5  # earliest label at 3: keep positions 2..6


def test_left_padded_completion_logits_equal_the_full_model_loss(tiny_llama_dir):
    """The fast path (left padding, logits for the completion only) gives transformers'
    own loss on the same rows, right-padded with every logit computed."""
    from tunelab.models import load_model

    model = load_model(str(tiny_llama_dir), device="cpu").model
    rows = [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE_INDEX] * 4 + [9, 10]},
        {"input_ids": [11, 12, 13], "labels": [IGNORE_INDEX, 12, 13]},
        {"input_ids": [14, 15, 16, 17, 18, 19, 20, 21], "labels": [IGNORE_INDEX] * 7 + [21]},
    ]
    with torch.no_grad():
        reference = model(**collate(rows, 0, is_encoder_decoder=False)).loss
        batch = collate(rows, 0, is_encoder_decoder=False, left_pad=True)
        keep = positions_to_keep(batch["labels"])
        assert keep == 3 < batch["input_ids"].shape[1]  # earliest label at column 6 of 8
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=keep).logits
        assert logits.shape[1] == keep
        assert completion_loss(logits, batch["labels"][:, -keep:]) == pytest.approx(float(reference), rel=1e-5)


def test_long_inputs_lose_their_end_never_the_instruction(tiny_llama_dir):
    from tunelab.data import Example
    from tunelab.models import load_model
    from tunelab.prompting import PromptBuilder
    from tunelab.training.data import tokenize_examples

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    builder = PromptBuilder(loaded.tokenizer, use_chat_template=False)
    long = Example("x", "#Person1#: Hello, how are you? " * 40, ("They greet each other.",))
    rows, shortened = tokenize_examples([long], builder, loaded.tokenizer, is_encoder_decoder=False, max_length=64)
    assert shortened == 1 and len(rows[0]["input_ids"]) <= 64
    text = loaded.tokenizer.decode(rows[0]["input_ids"])
    assert text.startswith("Summarize the following conversation.") and "Summary: They greet each other." in text
