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


def lm_eval_encoder(tokenizer, backend="causal"):
    """lm-evaluation-harness's own HFLM tokenization (``_encode_pair``, ``tok_encode``) on
    our tokenizer, without loading a model: the reference our encoding must equal."""
    from lm_eval.models.huggingface import HFLM  # in the dev extras

    lm = HFLM.__new__(HFLM)
    lm.tokenizer, lm.backend, lm.add_bos_token, lm.custom_prefix_token_id = tokenizer, backend, None, None
    return lm


@pytest.mark.parametrize("context, option", [
    ("Is it? ", " yes"), ("Is it?", " yes"), ("Premise: the man fell.\nHypothesis: he", " was hurt"),
    ("Question: where?\nAnswer:", " in the river bank over there"), ("a  ", "  b"), ("Q: x\nA:", "\n yes"),
])
def test_causal_tokens_equal_lm_eval(tiny_llama_dir, context, option):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    expected_context, expected_option = lm_eval_encoder(tokenizer)._encode_pair(context, option)
    e = encode_causal(tokenizer, context, [option])
    assert (e.context, e.options[0]) == (expected_context, expected_option)


def test_chat_context_gets_no_second_bos(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    context = (tokenizer.bos_token or "") + "Is it?"
    expected_context, expected_option = lm_eval_encoder(tokenizer)._encode_pair(context, " yes")
    e = encode_causal(tokenizer, context, [" yes"])
    assert (e.context, e.options[0]) == (expected_context, expected_option)


def test_empty_context_is_lm_eval_prefix_token(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    e = encode_causal(tokenizer, "", [" yes"])
    assert e.context == [lm_eval_encoder(tokenizer).prefix_token_id]
    assert e.options[0] == lm_eval_encoder(tokenizer).tok_encode(" yes", add_special_tokens=False)  # lm-eval's rule
