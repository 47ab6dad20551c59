"""Mixed LoRA batches: requests for different LoRA adapters and for the base share one
batch (peft's mixed-batch forward) and each row gets the text its adapter gives offline."""

import shutil
import time

import pytest
from safetensors.torch import load_file, save_file

from tests.serving.conftest import make_pool
from tunelab.generation import GenerationSettings
from tunelab.generation.batched import generate_from_ids
from tunelab.models import load_model
from tunelab.serving.engine import BatchingEngine, Request
from tunelab.training.methods import load_artifact
from tunelab.errors import TunelabError

PROMPTS = ["Where should we meet tomorrow?", "What time does the bank open?", "Bring an umbrella."]


def other_lora(folder, target):
    """A second LoRA adapter: the first with its B matrices scaled by -3."""
    shutil.copytree(folder, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    save_file({k: (v * -3 if "lora_B" in k else v).contiguous() for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
    return target


def offline(model_dir, adapter, max_new_tokens=8):
    loaded = load_model(str(model_dir), device="cpu")
    model = loaded.model if adapter is None else load_artifact(loaded.model, adapter)
    ids = [loaded.tokenizer(p)["input_ids"] for p in PROMPTS]
    return [g.text for g in generate_from_ids(model, loaded.tokenizer, ids, GenerationSettings(max_new_tokens=max_new_tokens), progress=False)]


@pytest.fixture
def mixed(arch, model_dir, trained_adapters, tmp_path):
    lora = trained_adapters[arch]["lora"]
    folders = {"lora": lora, "other.v2": other_lora(lora, tmp_path / "other")}
    loaded, pool = make_pool(model_dir, {**folders, "ia3": trained_adapters[arch]["ia3"]})
    expected = {name: offline(model_dir, folders.get(name)) for name in ("base", "lora", "other.v2")}
    assert len({tuple(v) for v in expected.values()}) == 3  # three different models
    return loaded, pool, expected


def test_one_batch_mixes_lora_adapters_and_the_base(mixed):
    loaded, pool, expected = mixed
    routes = {name: pool.route(name) for name in expected}
    assert len({id(model) for model, _ in routes.values()}) == 1  # one shared LoRA view
    assert routes["base"][1] == "__base__" and routes["lora"][1] != routes["other.v2"][1]
    assert pool.batch_group("lora") == pool.batch_group("other.v2") == pool.batch_group("base") != pool.batch_group("ia3")
    jobs = [(name, i) for i in range(len(PROMPTS)) for name in expected]  # interleaved rows
    ids = [loaded.tokenizer(PROMPTS[i])["input_ids"] for _, i in jobs]
    model = routes["lora"][0]
    outputs = generate_from_ids(model, loaded.tokenizer, ids, GenerationSettings(max_new_tokens=8, batch_size=len(jobs)),
                                progress=False, adapter_names=[routes[name][1] for name, _ in jobs])
    for (name, i), output in zip(jobs, outputs):
        assert output.text == expected[name][i], (name, i)
    with pytest.raises(TunelabError, match="no LoRA adapter named nope"):
        generate_from_ids(model, loaded.tokenizer, ids[:1], GenerationSettings(max_new_tokens=2), adapter_names=["nope"])


def test_the_engine_batches_them_together_and_unloading_keeps_the_rest(mixed):
    loaded, pool, expected = mixed
    engine = BatchingEngine(pool, loaded.tokenizer, max_batch_size=16, batch_wait_ms=500)
    try:
        settings = GenerationSettings(max_new_tokens=8)
        jobs = [(name, i) for name in expected for i in range(len(PROMPTS))]
        requests = [Request(name, loaded.tokenizer(PROMPTS[i])["input_ids"], settings) for name, i in jobs]
        for request in requests:
            engine.submit(request)
        for (name, i), request in zip(jobs, requests):
            assert request.result.result(timeout=60).text == expected[name][i], (name, i)
        assert list(engine.batch_sizes) == [len(jobs)]
        # an adapter unloaded while its request waits: that request fails alone
        engine.batch_wait = 0.5
        waiting = [Request(name, loaded.tokenizer(PROMPTS[0])["input_ids"], settings) for name in ("lora", "other.v2")]
        with pool.lock:  # the worker cannot form the batch until the adapter is gone
            for request in waiting:
                engine.submit(request)
            time.sleep(0.1)
            pool.remove("other.v2")
        assert waiting[0].result.result(timeout=60).text == expected["lora"][0]
        with pytest.raises(Exception, match="does not exist"):
            waiting[1].result.result(timeout=60)
        pool.remove("lora")  # the last LoRA adapter: the base is served alone again
        assert pool.route("base")[1] is None and pool.batch_group("base") == ("adapter", "base")
        last = Request("base", loaded.tokenizer(PROMPTS[1])["input_ids"], settings)
        assert engine.submit(last).result(timeout=60).text == expected["base"][1]
    finally:
        engine.close()
