"""(IA)^3 (Liu et al., 2022) through peft: learned vectors rescale keys, values and the
feed-forward activations; about 0.01% of the parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import MethodError
from tunelab.models.loading import model_type
from tunelab.training.methods._common import check_targets
from tunelab.training.methods.lora import task_type

# The paper's choice: keys, values and the feed-forward's second layer input.
DEFAULT_TARGETS = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
}


@dataclass
class IA3Settings:
    target_modules: list[str] | None = field(default=None, metadata={"help": "Modules to rescale (default: keys, values, feed-forward output layer)."})
    feedforward_modules: list[str] | None = field(default=None, metadata={"help": "Which targets are feed-forward layers (their input is rescaled, not their output)."})


def prepare(model: Any, settings: IA3Settings, tokenizer: Any) -> Any:
    from peft import IA3Config, get_peft_model

    default = DEFAULT_TARGETS.get(model_type(model))
    names = settings.target_modules or (default[0] if default else None)
    feedforward = settings.feedforward_modules if settings.feedforward_modules is not None else (default[1] if default else None)
    if not names:
        raise MethodError(f"no default IA3 targets for model type '{model_type(model)}'; set ia3.target_modules")
    check_targets(model, names)
    feedforward = [f for f in (feedforward or []) if f in names]
    config = IA3Config(task_type=task_type(model), target_modules=names, feedforward_modules=feedforward)
    return get_peft_model(model, config)


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
