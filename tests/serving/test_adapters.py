"""Adapters over one base: views share the base's tensors, and each view gives the same
outputs as the adapter loaded offline; paths stay inside the allowed directory."""

import os

import pytest
import torch

from tests.serving.conftest import KINDS, make_pool
from tunelab.models import load_model
from tunelab.models.adapters import load_artifact, read_artifact
from tunelab.serving.adapters import AdapterError, AdapterSet, shared_view


def test_every_kind_shares_the_base_and_matches_offline(arch, model_dir, trained_adapters):
    loaded, pool = make_pool(model_dir, trained_adapters[arch])
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    storage = {p.data_ptr() for p in loaded.model.parameters()}
    ids = loaded.tokenizer("Where should we meet tomorrow?", return_tensors="pt")["input_ids"]
    extra = {"decoder_input_ids": torch.zeros_like(ids[:, :1])} if loaded.is_encoder_decoder else {}
    with torch.no_grad():
        base_logits = loaded.model(input_ids=ids, **extra).logits
        for kind in KINDS:
            view = pool.get(kind).model
            shared = {p.data_ptr() for p in view.parameters()} & storage
            # every base tensor is shared, except the ones a selective fine-tune changed
            own = len(read_artifact(trained_adapters[arch][kind])[1]) if kind == "selective" else 0
            assert len(shared) == len(storage) - own, kind
            offline = load_artifact(load_model(str(model_dir), device="cpu").model, trained_adapters[arch][kind])
            served = view(input_ids=ids, **extra).logits
            assert torch.allclose(served, offline(input_ids=ids, **extra).logits, atol=1e-5), kind
            served = served[:, -base_logits.shape[1] :]  # a causal prompt-tuning model adds its virtual tokens' logits
            assert not torch.allclose(served, base_logits, atol=1e-4), f"{kind} changes nothing"
    for name, parameter in loaded.model.named_parameters():  # loading never wrote into the base
        assert torch.equal(parameter, base[name]), name
    with torch.no_grad():
        assert torch.equal(pool.get("base").model(input_ids=ids, **extra).logits, base_logits)


def test_shared_view_costs_no_weights(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu").model
    view = shared_view(model)
    assert view is not model and all(a is b for a, b in zip(view.parameters(), model.parameters()))
    assert view.get_output_embeddings().weight is view.get_input_embeddings().weight or not model.config.tie_word_embeddings


def test_paths_stay_inside_the_allowed_directory(tiny_llama_dir, trained_adapters, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    lora = trained_adapters["llama"]["lora"]
    os.symlink(lora, allowed / "escape")  # a link out of the allowed directory
    (allowed / "inside").mkdir()
    for f in lora.iterdir():
        (allowed / "inside" / f.name).write_bytes(f.read_bytes())
    linked = allowed / "linked"  # a folder inside whose weights file links out
    linked.mkdir()
    (linked / "adapter_config.json").write_text((lora / "adapter_config.json").read_text())
    os.symlink(lora / "adapter_model.safetensors", linked / "adapter_model.safetensors")
    pickled = allowed / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((lora / "adapter_config.json").read_text())
    torch.save({}, pickled / "adapter_model.bin")
    pool = AdapterSet(load_model(str(tiny_llama_dir), device="cpu").model, allowed_dir=allowed)
    assert pool.add("ok", "inside").kind == "lora"
    for path, status, message in [("../allowed/inside", 403, "'..'"), ("escape", 403, "outside"), (str(lora), 403, "outside"),
                                  ("missing", 404, "no adapter folder"), ("pickled", 422, "never loaded"),
                                  ("linked", 403, "links outside")]:
        with pytest.raises(AdapterError, match=message) as caught:
            pool.add("x", path)
        assert caught.value.status == status
    with pytest.raises(AdapterError, match="already loaded"):
        pool.add("ok", "inside")
    with pytest.raises(AdapterError, match="letters"):
        pool.add("bad name!", "inside")
    pool.remove("ok")
    with pytest.raises(AdapterError, match="does not exist; available: base") as caught:
        pool.get("ok")
    assert caught.value.status == 404
    with pytest.raises(AdapterError, match="cannot be unloaded"):
        pool.remove("base")
    closed = AdapterSet(load_model(str(tiny_llama_dir), device="cpu").model)
    with pytest.raises(AdapterError, match="--adapter-dir"):
        closed.add("x", "inside")


def test_a_file_swapped_for_a_link_after_the_path_check_is_never_read(tiny_llama_dir, trained_adapters, tmp_path, monkeypatch):
    """The race the path check alone loses: the weights become a symlink out of the allowed
    directory right after resolve_inside approved the folder. The load reads its own
    checked copy, so it refuses the link; a FIFO planted there cannot hang it either."""
    from tunelab.serving import adapters

    allowed = tmp_path / "allowed"
    (allowed / "inside").mkdir(parents=True)
    lora = trained_adapters["llama"]["lora"]
    for f in lora.iterdir():
        (allowed / "inside" / f.name).write_bytes(f.read_bytes())
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes((lora / "adapter_model.safetensors").read_bytes())
    check = adapters.resolve_inside

    def check_then_swap(path, root):
        folder = check(path, root)
        weights = folder / "adapter_model.safetensors"
        weights.unlink()
        weights.symlink_to(secret)  # after the check, before the load
        return folder

    monkeypatch.setattr(adapters, "resolve_inside", check_then_swap)
    pool = AdapterSet(load_model(str(tiny_llama_dir), device="cpu").model, allowed_dir=allowed)
    with pytest.raises(AdapterError, match="not a file inside the allowed directory") as caught:
        pool.add("x", "inside")
    assert caught.value.status == 403 and pool.names() == ["base"]
    monkeypatch.setattr(adapters, "resolve_inside", check)
    weights = allowed / "inside" / "adapter_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(AdapterError, match="not a file"):
        pool.add("x", "inside")
