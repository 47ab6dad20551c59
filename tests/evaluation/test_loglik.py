"""The shared-context scorer gives each option the log-probability that one plain forward
of (context + option) gives it, on both architectures, whatever the batch."""

import pytest
import torch

from tunelab.evaluation.loglik import encode_causal, encode_seq2seq, score_items
from tunelab.evaluation.scenarios import Item, choice_item

ITEMS = [
    choice_item("a", "Review: great movie\nSentiment:", ["negative", "positive"], 1),
    choice_item("b", "Where is the bank? ", ["no", "yes, by the river over there"], 0),  # a trailing space moves
    choice_item("c", "Summary:", ["They greet each other.", "Bye", "A much longer option than the others here"], 2),
    choice_item("d", "Q", ["x", "y"], 0),
    choice_item("e", "Tell me a longer story about the river and the bank and the town", ["no", "ok then"], 0),
]


def plain_score(model, tokenizer, item: Item, unconditional=False) -> list[float]:
    """One unpadded forward per option: the reference."""
    scores = []
    for option in item.options:
        with torch.no_grad():
            if model.config.is_encoder_decoder:
                e = encode_seq2seq(tokenizer, "" if unconditional else item.context, [option])
                logits = model(input_ids=torch.tensor([e.context]), labels=torch.tensor(e.options)).logits[0]
                scores.append(float(sum(torch.log_softmax(logits[i], -1)[t] for i, t in enumerate(e.options[0]))))
            else:
                e = encode_causal(tokenizer, "" if unconditional else item.context, [option])
                ids = e.context + e.options[0]
                logits = model(input_ids=torch.tensor([ids])).logits[0]
                start = len(e.context) - 1
                scores.append(float(sum(torch.log_softmax(logits[start + i], -1)[t] for i, t in enumerate(e.options[0]))))
    return scores


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_shared_context_scores_equal_one_forward_per_option(tiny_model, batch_size):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    scores, tokens = score_items(model, tokenizer, ITEMS, batch_size=batch_size)
    assert tokens > 0
    for item, got in zip(ITEMS, scores):
        assert got == pytest.approx(plain_score(model, tokenizer, item), abs=1e-4), item.id


def test_unconditional_scores_read_the_options_alone(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    scores, _ = score_items(model, tokenizer, ITEMS, unconditional=True)
    for item, got in zip(ITEMS, scores):
        assert got == pytest.approx(plain_score(model, tokenizer, item, unconditional=True), abs=1e-4)


def test_causal_tokens_follow_lm_eval(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    e = encode_causal(tokenizer, "Is it? ", [" yes"])
    whole = tokenizer("Is it?  yes", add_special_tokens=False)["input_ids"]
    assert e.context == tokenizer("Is it?", add_special_tokens=False)["input_ids"]
    assert e.context + e.options[0] == whole[: len(e.context)] + whole[len(e.context):]
    assert encode_causal(tokenizer, "", [" yes"]).context in ([tokenizer.bos_token_id], [tokenizer.eos_token_id])
