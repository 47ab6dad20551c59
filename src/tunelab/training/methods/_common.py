"""Helpers the method files share: freezing, module lookup, the small-artifact format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import write_json

ARTIFACT_CONFIG = "tunelab_adapter.json"  # tunelab's own small artifacts (selective, bottleneck)
ARTIFACT_WEIGHTS = "adapter_model.safetensors"


class MethodError(TunelabError):
    """A method cannot be applied as configured (names the fix)."""


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


def model_type(model: Any) -> str:
    return getattr(model.config, "model_type", "")


def write_artifact(folder: Path, method: str, tensors: dict[str, Any], extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / ARTIFACT_WEIGHTS))
    write_json(folder / ARTIFACT_CONFIG, {"method": method, **extra})


def read_artifact(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    config = json.loads((folder / ARTIFACT_CONFIG).read_text())
    return config, load_file(str(folder / ARTIFACT_WEIGHTS))


def load_tensors(model: Any, tensors: dict[str, Any], folder: Path) -> None:
    """Copy saved tensors into the model by name; every saved tensor must find its place."""
    own = dict(model.named_parameters())
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise MethodError(f"{folder}: {len(unknown)} saved tensors have no place in this model, e.g. {unknown[:3]}")
    import torch

    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name].dtype))
