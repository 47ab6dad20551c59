"""Loading models by name or path: the embedded default, local folders, GGUF files, hub
ids; and applying a trained adapter to one."""

from tunelab.models.adapters import load_artifact, load_for_inference
from tunelab.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    convert_gguf,
    default_gguf_path,
    load_model,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "convert_gguf",
    "default_gguf_path",
    "load_artifact",
    "load_for_inference",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
