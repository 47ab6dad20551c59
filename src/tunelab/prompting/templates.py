"""Prompts with zero, one or few in-context examples, fitted to the context window.

A base or seq2seq model sees plain text blocks in the course's shape (below). An
instruct model sees its own chat template around them: by default the whole plain
prompt in one user message (``shot_style="inline"``), or each in-context example as a
user turn answered by an assistant turn, then the question (``shot_style="turns"``).

    Summarize the following conversation.

    <dialogue>

    Summary: <summary>


    Summarize the following conversation.
    ...
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.data import Example
from tunelab.errors import PromptError


@dataclass
class PromptTemplate:
    """How one example is worded; the defaults are the course's DialogSum prompt."""

    instruction: str = field(
        default="Summarize the following conversation.",
        metadata={"help": "Task instruction placed before each input."},
    )
    output_label: str = field(
        default="Summary:",
        metadata={"help": "Cue before the answer in plain (non-chat) prompts."},
    )
    example_separator: str = field(
        default="\n\n\n",
        metadata={"help": "Text between in-context examples in plain prompts."},
    )
    shot_style: str = field(
        default="inline",
        metadata={
            "help": "With a chat template: 'inline' puts the examples and the question in one user "
            "message (the plain prompt), 'turns' makes each example a user turn answered by an "
            "assistant turn.",
            "choices": ("inline", "turns"),
        },
    )

    def user_text(self, example_input: str) -> str:
        return f"{self.instruction}\n\n{example_input}" if self.instruction else example_input

    def plain_block(self, example_input: str, answer: str | None) -> str:
        # an empty cue (and no instruction) leaves the input itself: a text to continue
        block = f"{self.user_text(example_input)}\n\n{self.output_label}" if self.output_label else self.user_text(example_input)
        return f"{block} {answer}" if answer is not None else block


@dataclass
class Prompt:
    """The exact text a model sees for one example, and the shots it holds."""

    example: Example
    text: str
    shot_ids: list[str]
    num_tokens: int


class ShotSelector:
    """Chooses in-context examples: fixed ids, or a seeded draw from a pool.

    A seeded draw permutes the pool once, so every row gets the same shots except
    where a shot *is* the row being answered (same id or same text); that one is
    replaced by the next in the permutation. A fixed id that is the row itself is left
    out, so that row gets one shot fewer (its output row lists the shots it got).
    """

    def __init__(
        self, pool: Sequence[Example], k: int | None = None, *, ids: Sequence[str] | None = None, seed: int = 0
    ) -> None:
        if k is not None and k < 0:
            raise PromptError(f"--shots must be >= 0, got {k}")
        if ids and k == 0:
            raise PromptError("--shots 0 with --shot-ids: give one or the other")
        k = len(ids) if k is None and ids else k or 0
        self.fixed = bool(ids)
        by_id = {example.id: example for example in pool}
        if ids:
            missing = [i for i in ids if i not in by_id]
            if missing:
                sample = ", ".join(list(by_id)[:5])
                raise PromptError(f"shot ids not in the pool: {', '.join(missing)} (pool ids look like: {sample}, ...)")
            self.order = [by_id[i] for i in ids]
        else:
            self.order = list(pool)
            random.Random(seed).shuffle(self.order)
        self.k = k
        if len(self.order) < k:
            raise PromptError(f"asked for {k} shots but only {len(self.order)} are available")

    def for_example(self, example: Example) -> list[Example]:
        shots = [s for s in self.order if s.id != example.id and s.input != example.input][: self.k]
        if len(shots) < self.k and not self.fixed:
            raise PromptError(
                f"the shot pool has only {len(shots)} examples besides '{example.id}' itself; asked for {self.k}"
            )
        if any(not s.references for s in shots):
            raise PromptError("in-context examples need a reference answer; the shot pool has rows without one")
        return shots


class PromptBuilder:
    """Renders prompts for one model and checks each fits its context window."""

    def __init__(
        self,
        tokenizer: Any,
        template: PromptTemplate | None = None,
        *,
        use_chat_template: bool | None = None,
        context_window: int | None = None,
        is_encoder_decoder: bool = False,
        max_new_tokens: int = 0,
        on_overflow: str = "error",
    ) -> None:
        if template is not None and template.shot_style not in ("inline", "turns"):
            raise PromptError(f"shot_style must be 'inline' or 'turns', got '{template.shot_style}'")
        if on_overflow not in ("error", "drop-shots"):
            raise PromptError(f"on_overflow must be 'error' or 'drop-shots', got '{on_overflow}'")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise PromptError("--chat-template on, but this tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        self.context_window = context_window
        # A decoder-only model's window holds the prompt *and* the new tokens; an
        # encoder-decoder's encoder window holds the prompt alone.
        self.reserved = 0 if is_encoder_decoder else max_new_tokens
        self.on_overflow = on_overflow

    @property
    def adds_special_tokens(self) -> bool:
        """Whether generation should let the tokenizer add BOS/EOS: a rendered chat
        template already holds every special token it needs."""
        return not self.use_chat_template

    def render(self, example: Example, shots: Sequence[Example]) -> str:
        if not self.use_chat_template:
            return self._plain(example, shots)
        if self.template.shot_style == "inline":
            messages = [{"role": "user", "content": self._plain(example, shots)}]
        else:
            messages = []
            for shot in shots:
                messages.append({"role": "user", "content": self.template.user_text(shot.input)})
                messages.append({"role": "assistant", "content": shot.references[0]})
            messages.append({"role": "user", "content": self.template.user_text(example.input)})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _plain(self, example: Example, shots: Sequence[Example]) -> str:
        blocks = [self.template.plain_block(s.input, s.references[0]) for s in shots]
        blocks.append(self.template.plain_block(example.input, None))
        return self.template.example_separator.join(blocks)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=self.adds_special_tokens)["input_ids"])

    def build(self, example: Example, shots: Sequence[Example]) -> Prompt:
        """The prompt with as many of ``shots`` as fit; never cuts the example itself."""
        shots = list(shots)
        while True:
            text = self.render(example, shots)
            n_tokens = self.count_tokens(text)
            if self.context_window is None or n_tokens + self.reserved <= self.context_window:
                return Prompt(example=example, text=text, shot_ids=[s.id for s in shots], num_tokens=n_tokens)
            if self.on_overflow == "drop-shots" and shots:
                shots.pop()  # drop from the end: the first examples are kept
                continue
            room = f"{n_tokens} prompt tokens" + (f" + {self.reserved} new tokens" if self.reserved else "")
            hint = "use --on-overflow drop-shots or fewer --shots" if shots else "the input alone is too long for this model"
            raise PromptError(
                f"example '{example.id}': {room} exceed the model's context window of "
                f"{self.context_window} tokens ({len(shots)} shots); {hint}"
            )

    def build_all(self, examples: Sequence[Example], selector: ShotSelector | None) -> list[Prompt]:
        return [self.build(e, selector.for_example(e) if selector else []) for e in examples]
