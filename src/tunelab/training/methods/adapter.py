"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): only the adapters
train. Their structure, shared with loading a saved one, is in ``models/bottleneck.py``;
the artifact is the adapter tensors in one safetensors file plus a JSON config."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelab.models.adapters import write_artifact
from tunelab.models.bottleneck import ADAPTER_NAME, AdapterSettings, insert
from tunelab.training.methods._common import freeze_all


def prepare(model: Any, settings: AdapterSettings, tokenizer: Any) -> Any:
    freeze_all(model)
    insert(model, settings)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(ADAPTER_NAME in name)
    return model


def save(model: Any, folder: Path, tokenizer: Any) -> None:
    tensors = {n: p for n, p in model.named_parameters() if ADAPTER_NAME in n}
    write_artifact(folder, "adapter", tensors, {"settings": asdict(model.tunelab_adapter_settings)})
    tokenizer.save_pretrained(folder)
