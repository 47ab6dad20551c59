"""The calculator inside generation, as GSM8K's training solutions use it: when the model has
opened a call and written its '=' (``<<48/2=``), the next tokens are the calculator's result
and ``>>`` (``24>>``), forced; then the model goes on. It is a ``Constraint``
(tunelab.generation.constraint), so it runs inside tunelab's batched decoding loop: rows of
a batch call the tool independently, the KV cache carries on past each result (no prompt
is encoded twice), and decoder-only and encoder-decoder models both work."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.agents.gsm8k import calculator_result

OPEN, CLOSE, EQUALS = "<<", ">>", "="


class InlineCalculator:
    """One row's calculator. ``calls`` keeps every (expression, result) it answered."""

    def __init__(self, tokenizer: Any, inner_equals: torch.Tensor, prefix: str = ""):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.calls: list[tuple[str, str]] = []
        self.call_open = False
        # A token that holds '=' and more after it ('=2') would close the expression with
        # text the calculator's result could not precede: inside a call, such tokens are
        # barred (``equals_then_more``, computed once for all rows).
        self.inner_equals = inner_equals
        # ``prefix``: text forced before the model writes anything (for tests, and for a caller
        # that starts the solution itself).
        self.forced: list[int] = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []

    def mask_(self, logits: torch.Tensor) -> None:
        if self.forced:
            allowed = self.forced[0]
            kept = logits[allowed].clone()
            logits.fill_(float("-inf"))
            logits[allowed] = kept
        elif self.call_open:
            logits[self.inner_equals[: logits.shape[-1]].to(logits.device)] = float("-inf")

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
                self.forced = self.tokenizer(result + CLOSE, add_special_tokens=False)["input_ids"]

    @property
    def finished(self) -> bool:
        return False  # the model ends the solution (end of sequence or the token limit)


def equals_then_more(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """A mask over the vocabulary: the tokens whose text holds '=' with more text after it."""
    texts = tokenizer.batch_decode([[token] for token in range(min(vocab_size, len(tokenizer)))])
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[: len(texts)] = torch.tensor([EQUALS in text and not text.endswith(EQUALS) for text in texts])
    return mask
