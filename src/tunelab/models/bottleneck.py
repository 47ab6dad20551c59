"""Bottleneck adapters, written here since peft has none.

An adapter is x + up(act(down(x))) with a hidden size of d_model / reduction_factor,
``up`` initialised to zero so a fresh adapter leaves the model's output unchanged.

* Houlsby et al. (2019): after the attention block's output projection and after the
  feed-forward block's output projection, before each residual addition.
* Pfeiffer et al. (2021): after the feed-forward block only (as fast, half the size).

Adapters hang off the existing Linear layers as submodules with forward hooks, so the
base weights and their names stay as they are. Training (``training/methods/adapter.py``)
and loading a saved artifact (``models/adapters.py``) build them with the same ``insert``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import MethodError
from tunelab.models.loading import model_type

# Output projections of the attention and feed-forward blocks (suffixes of module names).
ATTENTION_OUTPUTS = {"llama": ["self_attn.o_proj"], "t5": ["SelfAttention.o"]}
FEEDFORWARD_OUTPUTS = {"llama": ["mlp.down_proj"], "t5": ["DenseReluDense.wo"]}
ADAPTER_NAME = "tunelab_adapter"


@dataclass
class AdapterSettings:
    style: str = field(default="houlsby", metadata={"help": "houlsby (after attention and feed-forward) or pfeiffer (after feed-forward only).", "choices": ("houlsby", "pfeiffer")})
    reduction_factor: int = field(default=16, metadata={"help": "Bottleneck size = hidden size / this (Pfeiffer et al.: 16)."})
    non_linearity: str = field(default="relu", metadata={"help": "relu, gelu or silu.", "choices": ("relu", "gelu", "silu")})
    attention_modules: list[str] | None = field(default=None, metadata={"help": "Suffixes of attention output projections (default per architecture)."})
    feedforward_modules: list[str] | None = field(default=None, metadata={"help": "Suffixes of feed-forward output projections (default per architecture)."})


def _bottleneck(size: int, hidden: int, non_linearity: str, like: Any) -> Any:
    import torch

    class Bottleneck(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = torch.nn.Linear(size, hidden)
            self.act = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), "silu": torch.nn.SiLU()}[non_linearity]
            self.up = torch.nn.Linear(hidden, size)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, x):
            return x + self.up(self.act(self.down(x)))

    return Bottleneck().to(device=like.device, dtype=like.dtype)


def _targets(model: Any, settings: AdapterSettings) -> list[str]:
    kind = model_type(model)
    attention = settings.attention_modules or ATTENTION_OUTPUTS.get(kind)
    feedforward = settings.feedforward_modules or FEEDFORWARD_OUTPUTS.get(kind)
    if feedforward is None or (settings.style == "houlsby" and attention is None):
        raise MethodError(
            f"no default adapter placement for model type '{kind}'; set adapter.feedforward_modules "
            "(and adapter.attention_modules for houlsby)"
        )
    suffixes = list(feedforward) + (list(attention) if settings.style == "houlsby" else [])
    names = [name for name, _ in model.named_modules() if any(name.endswith(s) for s in suffixes)]
    for suffix in suffixes:
        if not any(name.endswith(suffix) for name in names):
            raise MethodError(f"adapter placement '{suffix}' matches no module of this model")
    return names


def insert(model: Any, settings: AdapterSettings) -> list[str]:
    """Attach a zero-initialised adapter after each target module; returns their names.
    The settings stay on the model (``tunelab_adapter_settings``) for saving."""
    if settings.style not in ("houlsby", "pfeiffer"):
        raise MethodError(f"adapter.style must be houlsby or pfeiffer, got '{settings.style}'")
    if settings.reduction_factor < 1:
        raise MethodError("adapter.reduction_factor must be >= 1")
    names = _targets(model, settings)
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        size = module.out_features
        adapter = _bottleneck(size, max(1, size // settings.reduction_factor), settings.non_linearity, module.weight)
        module.add_module(ADAPTER_NAME, adapter)
        module.register_forward_hook(lambda mod, args, output: getattr(mod, ADAPTER_NAME)(output))
    model.tunelab_adapter_settings = settings
    return names
