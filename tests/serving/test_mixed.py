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
from tunelab.models.adapters import load_artifact
from tunelab.serving.engine import BatchingEngine, Request
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
    finally:
        engine.close()
    # an adapter unloaded while its request waits: that request fails alone (the worker
    # is stopped, so the test forms and runs the batch itself)
    waiting = [Request(name, loaded.tokenizer(PROMPTS[0])["input_ids"], settings) for name in ("lora", "other.v2")]
    engine.pending.extend(waiting)
    pool.remove("other.v2")
    while engine.pending:
        engine._generate(engine._next_batch())
    assert waiting[0].result.result(timeout=0).text == expected["lora"][0]
    with pytest.raises(Exception, match="does not exist"):
        waiting[1].result.result(timeout=0)
    engine = BatchingEngine(pool, loaded.tokenizer, max_batch_size=16)
    try:
        pool.remove("lora")  # the last LoRA adapter: the base is served alone again
        assert pool.route("base")[1] is None and pool.batch_group("base") == ("adapter", "base")
        last = Request("base", loaded.tokenizer(PROMPTS[1])["input_ids"], settings)
        assert engine.submit(last).result(timeout=60).text == expected["base"][1]
    finally:
        engine.close()


def random_lora(model_dir, folder, targets, seed, **options):
    """An untrained LoRA adapter with non-zero weights on the given modules."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_model(str(model_dir), device="cpu").model
    get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False, **options)).save_pretrained(folder)
    return folder


def test_adapters_on_different_modules_and_unmixable_ones(arch, model_dir, tmp_path):
    """Removing the first (active) of two adapters on different modules keeps the other
    working; a DoRA adapter (no mixed-batch path in peft) gets a view of its own."""
    q, v = ("q_proj", "v_proj") if arch == "llama" else ("q", "v")
    folders = {"on-q": random_lora(model_dir, tmp_path / "q", [q], 1), "on-v": random_lora(model_dir, tmp_path / "v", [v], 2),
               "dora": random_lora(model_dir, tmp_path / "dora", [q, v], 3, use_dora=True)}
    loaded, pool = make_pool(model_dir, folders)
    assert pool.route("dora")[1] is None and pool.batch_group("dora") == ("adapter", "dora")
    assert pool.route("on-q")[0] is pool.route("on-v")[0] is not pool.route("dora")[0]
    expected = {name: offline(model_dir, folder) for name, folder in folders.items()}
    engine = BatchingEngine(pool, loaded.tokenizer, max_batch_size=16, batch_wait_ms=300)
    try:
        settings = GenerationSettings(max_new_tokens=8)
        requests = {name: Request(name, loaded.tokenizer(PROMPTS[0])["input_ids"], settings) for name in folders}
        for request in requests.values():
            engine.submit(request)
        for name, request in requests.items():
            assert request.result.result(timeout=60).text == expected[name][0], name
        assert sorted(engine.batch_sizes) == [1, 2]  # the two mixable ones together, DoRA alone
        pool.remove("on-q")
        again = Request("on-v", loaded.tokenizer(PROMPTS[1])["input_ids"], settings)
        assert engine.submit(again).result(timeout=60).text == expected["on-v"][1]
        pool.add("on-q", folders["on-q"], trusted=True)  # the shared view still takes new ones
        back = Request("on-q", loaded.tokenizer(PROMPTS[2])["input_ids"], settings)
        assert engine.submit(back).result(timeout=60).text == expected["on-q"][2]
    finally:
        engine.close()
