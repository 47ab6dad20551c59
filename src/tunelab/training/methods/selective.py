"""Selective fine-tuning: train chosen parameters, freeze the rest.

Choose by regular expressions on parameter names, by the last N transformer blocks, or
BitFit (Ben Zaken et al., 2022: biases only). Llama and T5 have no biases at all, so
BitFit adds zero-initialised biases to their Linear layers (the output is unchanged
until training moves them; ``models.adapters.add_zero_biases``, which loading shares)
and trains those. The artifact holds only the trained
tensors: a few hundred KB instead of the whole model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import MethodError
from tunelab.models.adapters import add_zero_biases, write_artifact
from tunelab.training.methods._common import freeze_all

_BLOCK = re.compile(r"^(.*?\.(?:layers|block|h|blocks))\.(\d+)\.")


@dataclass
class SelectiveSettings:
    patterns: list[str] = field(default_factory=list, metadata={"help": "Regular expressions; parameters whose name matches any one train."})
    last_n_blocks: int = field(default=0, metadata={"help": "Train the last N transformer blocks (of the encoder and of the decoder for T5)."})
    bitfit: bool = field(default=False, metadata={"help": "Train biases only (BitFit); adds zero biases where a model has none."})


def _block_parameters(model: Any, n: int) -> set[str]:
    stacks: dict[str, int] = {}
    for name, _ in model.named_parameters():
        match = _BLOCK.match(name)
        if match:
            stacks[match.group(1)] = max(stacks.get(match.group(1), -1), int(match.group(2)))
    if not stacks:
        raise MethodError("last_n_blocks: found no numbered transformer blocks (…layers.N… or …block.N…) in this model")
    chosen = set()
    for name, _ in model.named_parameters():
        match = _BLOCK.match(name)
        if match and int(match.group(2)) > stacks[match.group(1)] - n:
            chosen.add(name)
    return chosen


def prepare(model: Any, settings: SelectiveSettings, tokenizer: Any) -> Any:
    if not (settings.patterns or settings.last_n_blocks or settings.bitfit):
        raise MethodError("selective: choose what trains with selective.patterns, selective.last_n_blocks or selective.bitfit")
    model.tunelab_added_biases = add_zero_biases(model) if settings.bitfit and not any(
        n.endswith(".bias") for n, _ in model.named_parameters()
    ) else []
    freeze_all(model)
    chosen: set[str] = set()
    names = [n for n, _ in model.named_parameters()]
    for pattern in settings.patterns:
        matched = {n for n in names if re.search(pattern, n)}
        if not matched:
            sample = ", ".join(names[:6])
            raise MethodError(f"selective pattern '{pattern}' matches no parameter; names look like: {sample}, …")
        chosen |= matched
    if settings.last_n_blocks:
        chosen |= _block_parameters(model, settings.last_n_blocks)
    if settings.bitfit:
        chosen |= {n for n in names if n.endswith(".bias")}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return model


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    write_artifact(folder, "selective", tensors, {"added_biases": getattr(model, "tunelab_added_biases", [])})
    tokenizer.save_pretrained(folder)
