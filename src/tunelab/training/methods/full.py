"""Full fine-tuning: every parameter trains; the artifact is a whole model folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FullSettings:
    """Full fine-tuning has no settings of its own (learning rate etc. are the engine's)."""


def prepare(model: Any, settings: FullSettings, tokenizer: Any) -> Any:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
