"""Generation settings: a plain dataclass, importable without torch (the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.errors import TunelabError


@dataclass
class GenerationSettings:
    """How to decode. Defaults are greedy decoding, as the course scored DialogSum."""

    max_new_tokens: int = field(default=64, metadata={"help": "Most new tokens per prompt."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature when sampling (>0)."})
    top_k: int = field(default=50, metadata={"help": "Keep the k most likely tokens when sampling; 0 keeps all."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest set of tokens with this total probability."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Divide the logits of tokens already in the sequence by this (>1 discourages repeats; CTRL paper: 1.2)."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Strings that end generation; the text is cut before the first one."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per batch (sorted by length first)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling; the same seed and settings give the same texts."})

    def validate(self) -> None:
        # transformers' logits processors insist on floats: accept 1 as well as 1.0
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)
        self.repetition_penalty = float(self.repetition_penalty)
        self.stop = tuple(self.stop)
        problems = []
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be >= 1")
        if self.temperature <= 0:
            problems.append("temperature must be > 0 (use greedy decoding instead of temperature 0)")
        if self.top_k < 0:
            problems.append("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            problems.append("repetition_penalty must be > 0")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise TunelabError("bad generation settings: " + "; ".join(problems))
