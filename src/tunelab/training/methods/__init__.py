"""Fine-tuning methods, one file per family, all behind one small interface:

    prepare(model, settings, tokenizer) -> model   # set what trains (may wrap the model)
    save(model, folder, tokenizer)                 # write the final artifact

plus, for tunelab's own artifacts, ``load(model, folder) -> model``. This is the one
registry in tunelab: many methods share one interface, as in peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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



def load_artifact(model: Any, folder: str | Path) -> Any:
    """Apply a trained artifact to its base model for inference: a peft adapter folder
    (LoRA, prompt/prefix tuning, IA3) or a tunelab one (selective, bottleneck adapter)."""
    from tunelab.training.methods._common import ARTIFACT_CONFIG, MethodError

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        if not (folder / "adapter_model.safetensors").is_file():
            raise MethodError(f"{folder}: no adapter_model.safetensors (pickled adapter weights are not loaded)")
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder)).eval()
    if (folder / ARTIFACT_CONFIG).is_file():
        import json

        kind = json.loads((folder / ARTIFACT_CONFIG).read_text()).get("method")
        loaders = {"selective": selective.load, "adapter": adapter.load}
        if kind not in loaders:
            raise MethodError(f"{folder}: unknown tunelab artifact method '{kind}'")
        return loaders[kind](model, folder).eval()
    if (folder / "config.json").is_file():
        raise MethodError(f"{folder} is a whole model (full fine-tuning): pass it as --model, not --adapter")
    raise MethodError(f"{folder} is not an adapter folder (no adapter_config.json or {ARTIFACT_CONFIG})")


__all__ = ["METHODS", "Method", "load_artifact"]
