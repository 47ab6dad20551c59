"""Every method's trained artifact on disk: read onto a base model, and tunelab's own written.

Two formats, both with their weights in ``adapter_model.safetensors``:
  * peft folders (LoRA, prompt and prefix tuning, IA3): ``adapter_config.json``, read by peft;
  * tunelab's small artifacts (selective fine-tuning, bottleneck adapters):
    ``tunelab_adapter.json`` (method and settings) plus only the trained tensors.
Training writes them (``training/methods``); everything that applies one (the CLI's
``--adapter``, the server's adapter views, reward models, PPO's ``init_adapter``) reads
them through here, and every load first passes ``check_safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import MethodError
from tunelab.files import write_json
from tunelab.models.bottleneck import AdapterSettings, insert

PEFT_CONFIG = "adapter_config.json"
ARTIFACT_CONFIG = "tunelab_adapter.json"  # tunelab's own small artifacts (selective, bottleneck)
ARTIFACT_WEIGHTS = "adapter_model.safetensors"  # peft's name, so both formats keep weights alike
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


def check_safetensors(folder: Path) -> None:
    """Adapter weights come from safetensors only: unpickling a ``.bin`` can run arbitrary
    code, and peft falls back to ``adapter_model.bin`` when the safetensors file is missing."""
    if (folder / ARTIFACT_WEIGHTS).is_file():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    refused = f"; pickled weights ({', '.join(pickles)}) are never loaded, since unpickling can run code" if pickles else ""
    raise MethodError(f"{folder}: no {ARTIFACT_WEIGHTS}{refused}")


def adapter_kind(folder: Path) -> str:
    """lora, ia3, prompt_tuning, prefix_tuning, ... (peft) or adapter / selective (tunelab)."""
    if (folder / PEFT_CONFIG).is_file():
        return str(json.loads((folder / PEFT_CONFIG).read_text()).get("peft_type", "peft")).lower()
    if (folder / ARTIFACT_CONFIG).is_file():
        return str(json.loads((folder / ARTIFACT_CONFIG).read_text()).get("method", "tunelab"))
    if (folder / "config.json").is_file():
        raise MethodError(f"{folder} is a whole model (full fine-tuning): pass it as --model, not --adapter")
    raise MethodError(f"{folder} is not an adapter folder (no {PEFT_CONFIG} or {ARTIFACT_CONFIG})")


# -- tunelab's own format -------------------------------------------------------------------
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


def add_zero_biases(model: Any, modules: list[str] | None = None) -> list[str]:
    """Give bias-free Linear layers (except the output head) a zero bias; returns their
    names. BitFit trains these on Llama and T5, which have no biases of their own."""
    import torch

    added = []
    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if modules is not None and name not in modules:
            continue
        if isinstance(module, torch.nn.Linear) and module.bias is None and module is not output_head:
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device))
            added.append(name)
    return added


def _load_selective(model: Any, folder: Path) -> Any:
    config, tensors = read_artifact(folder)
    add_zero_biases(model, config.get("added_biases") or [])
    load_tensors(model, tensors, folder)
    return model


def _load_bottleneck(model: Any, folder: Path) -> Any:
    config, tensors = read_artifact(folder)
    insert(model, AdapterSettings(**config["settings"]))
    load_tensors(model, tensors, folder)
    return model


# -- applying any artifact --------------------------------------------------------------------
def load_artifact(model: Any, folder: str | Path) -> Any:
    """Apply a trained artifact to its base model for inference: a peft adapter folder
    (LoRA, prompt/prefix tuning, IA3) or a tunelab one (selective, bottleneck adapter)."""
    folder = Path(folder)
    kind = adapter_kind(folder)
    check_safetensors(folder)
    if (folder / PEFT_CONFIG).is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder)).eval()
    loaders = {"selective": _load_selective, "adapter": _load_bottleneck}
    if kind not in loaders:
        raise MethodError(f"{folder}: unknown tunelab artifact method '{kind}'")
    return loaders[kind](model, folder).eval()


def load_for_inference(model: str, adapter: str | Path | None = None, **options: Any) -> Any:
    """A model (``load_model``'s options), with a trained adapter applied when one is given."""
    from tunelab.models.loading import load_model

    loaded = load_model(model, **options)
    if adapter:
        loaded.model = load_artifact(loaded.model, adapter)
    return loaded
