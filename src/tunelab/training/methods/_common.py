"""Helpers the method files share: freezing and checking target modules."""

from __future__ import annotations

from typing import Any

from tunelab.errors import MethodError


def freeze_all(model: Any) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def linear_module_names(model: Any) -> list[str]:
    """Short names (last path part) of every Linear layer, for error messages."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_targets(model: Any, targets: list[str]) -> None:
    """Every target name must match some module's last path part (peft's rule)."""
    short_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in short_names]
    if missing:
        raise MethodError(
            f"target modules {missing} match no module of this model; its Linear layers are: "
            f"{', '.join(linear_module_names(model))}"
        )
