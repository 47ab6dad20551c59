"""The calculator inside generation, as GSM8K's training solutions use it: when the model has
opened a call and written its '=' (``<<48/2=``), the next tokens are the calculator's result
and ``>>`` (``24>>``), forced; then the model goes on. It is a ``Constraint``
(tunelab.generation.constraint), so it runs inside tunelab's batched decoding loop: rows of
a batch call the tool independently, the KV cache carries on past each result (no prompt
is encoded twice), and decoder-only and encoder-decoder models both work."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from tunelab.agents.gsm8k import calculator_result

OPEN, CLOSE, EQUALS = "<<", ">>", "="


class InlineCalculator:
    """One row's calculator. ``calls`` keeps every (expression, result) it answered."""

    def __init__(self, tokenizer: Any, barred_in_call: torch.Tensor, prefix: str = ""):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.calls: list[tuple[str, str]] = []
        self.call_open = False
        # A token holding '=' with more after it ('=2') or a second '=' ('==') would close
        # the expression in a way the calculator's result could not follow: inside a call,
        # such tokens are barred (``barred_inside_calls``, computed once per tokenizer).
        self.barred_in_call = barred_in_call
        # ``prefix``: text forced before the model writes anything (for tests, and for a caller
        # that starts the solution itself).
        self.forced: list[int] = continuation_ids(tokenizer, prefix) if prefix else []

    def mask_(self, logits: torch.Tensor) -> None:
        if self.forced:
            logits.fill_(float("-inf"))
            logits[self.forced[0]] = 0.0  # the only choice, whatever the model thought of it
        elif self.call_open:
            if self.barred_in_call.device != logits.device:
                self.barred_in_call = self.barred_in_call.to(logits.device)
            logits[self.barred_in_call] = float("-inf")

    def consume(self, token: int) -> None:
        self.tokens.append(token)
        if self.forced:
            self.forced.pop(0)
            if self.forced:
                return
        tail = self.tokenizer.decode(self.tokens, skip_special_tokens=True).rsplit(CLOSE, 1)[-1]
        self.call_open = OPEN in tail
        if self.call_open and tail.endswith(EQUALS) and not self.forced:
            expression = tail.rsplit(OPEN, 1)[1][: -len(EQUALS)]
            if EQUALS not in expression:  # the first '=' of the call: the calculator answers
                result = calculator_result(expression)
                self.calls.append((expression, result))
                self.forced = continuation_ids(self.tokenizer, result + CLOSE)

    @property
    def finished(self) -> bool:
        return False  # the model ends the solution (end of sequence or the token limit)


def continuation_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids that decode to exactly ``text`` when they follow other text: a SentencePiece
    tokenizer (Llama 2, T5) would start ``text`` encoded alone with a word-start space, so
    it is encoded after an '=' and the ids of that '=' are dropped."""
    ids = tokenizer("=" + text, add_special_tokens=False)["input_ids"]
    for start in range(1, len(ids)):
        if tokenizer.decode(ids[start:], skip_special_tokens=True) == text:
            return ids[start:]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


_BARRED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (vocab size, mask), as constrained.py caches


def barred_inside_calls(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """A mask over the vocabulary: the tokens whose text holds '=' with more text after it,
    or more than one '='. Computed once per tokenizer (decoding the whole vocabulary)."""
    cached = _BARRED.get(tokenizer)
    if cached is None or cached[0] != vocab_size:
        texts = tokenizer.batch_decode([[token] for token in range(min(vocab_size, len(tokenizer)))])
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[: len(texts)] = torch.tensor([text.count(EQUALS) > 1 or (EQUALS in text and not text.endswith(EQUALS))
                                           for text in texts])
        cached = _BARRED[tokenizer] = (vocab_size, mask)
    return cached[1]
