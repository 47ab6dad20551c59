"""Fine-tuning methods, one file per family, all behind one small interface:

    prepare(model, settings, tokenizer) -> model   # set what trains (may wrap the model)
    save(model, folder, tokenizer)                 # write the final artifact

Reading any method's artifact back (``load_artifact``) is in ``models/adapters.py``, which
inference shares. This is the one registry in tunelab: many methods share one
interface, as in peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tunelab.training.methods import adapter, full, ia3, lora, selective, soft_prompts


@dataclass(frozen=True)
class Method:
    name: str
    settings_field: str | None  # the TrainConfig field holding its settings
    prepare: Callable[..., Any]
    save: Callable[..., None]
    description: str


METHODS: dict[str, Method] = {
    "full": Method("full", None, full.prepare, full.save, "every parameter trains"),
    "selective": Method("selective", "selective", selective.prepare, selective.save, "chosen parameters: name patterns, last N blocks, BitFit"),
    "lora": Method("lora", "lora", lora.prepare, lora.save, "low-rank updates (peft)"),
    "prompt-tuning": Method("prompt-tuning", "prompt_tuning", soft_prompts.prepare_prompt_tuning, soft_prompts.save, "soft prompt of N virtual tokens (peft)"),
    "prefix-tuning": Method("prefix-tuning", "prefix_tuning", soft_prompts.prepare_prefix_tuning, soft_prompts.save, "learned key/value prefixes (peft)"),
    "ia3": Method("ia3", "ia3", ia3.prepare, ia3.save, "learned rescaling vectors (peft)"),
    "adapter": Method("adapter", "adapter", adapter.prepare, adapter.save, "bottleneck adapters, Houlsby or Pfeiffer (tunelab)"),
}


__all__ = ["METHODS", "Method"]
