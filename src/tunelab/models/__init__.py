"""Loading models by name or path: the embedded default, local folders, GGUF files, hub ids."""

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
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
