"""The batch worker's guard: whatever a batch raises fails only the requests it must, and
the worker goes on serving (tiny Llama, real generation)."""

import threading

import pytest

from tunelab.generation import GenerationSettings
from tunelab.models import load_model
from tunelab.serving.adapters import AdapterSet
from tunelab.serving.engine import BatchingEngine, Request

PROMPTS = ["Where should we meet tomorrow?", "What time does the bank open?", "Bring an umbrella.", "Hello there."]
POISON = "Bring an umbrella."


@pytest.fixture
def engine(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    engine = BatchingEngine(AdapterSet(loaded.model), loaded.tokenizer, max_batch_size=8, batch_wait_ms=300)
    engine.ids = lambda text: loaded.tokenizer(text)["input_ids"]
    yield engine
    engine.close()


def submit_all(engine, prompts, settings=GenerationSettings(max_new_tokens=4)):
    requests = [Request("base", engine.ids(p), settings) for p in prompts]
    for request in requests:
        engine.submit(request)
    return requests


def poison_batches(engine, monkeypatch):
    """Decoding fails for any batch holding the poison prompt."""
    decode, poison = engine._decode, engine.ids(POISON)

    def decode_unless_poisoned(batch, *args):
        if any(r.prompt_ids == poison for r in batch):
            raise RuntimeError("this batch broke")
        return decode(batch, *args)

    monkeypatch.setattr(engine, "_decode", decode_unless_poisoned)


def test_a_request_that_breaks_its_batch_fails_alone(engine, monkeypatch):
    poison_batches(engine, monkeypatch)
    requests = submit_all(engine, PROMPTS)
    outcomes = {}
    for prompt, request in zip(PROMPTS, requests):
        try:
            outcomes[prompt] = request.result.result(timeout=60).finish_reason
        except RuntimeError as exc:
            outcomes[prompt] = str(exc)
    assert outcomes[POISON] == "this batch broke"
    assert all(outcomes[p] in ("length", "stop") for p in PROMPTS if p != POISON), outcomes
    assert engine.stats["retried_alone"] == len(PROMPTS) and engine.stats["failed"] == 1
    # the worker goes on
    again = submit_all(engine, PROMPTS[:1])[0]
    assert again.result.result(timeout=60).token_ids and engine.health()["worker_alive"]


def test_a_batch_of_one_that_raises_fails_that_request_and_the_worker_goes_on(engine, monkeypatch):
    poison_batches(engine, monkeypatch)
    alone = submit_all(engine, [POISON])[0]
    with pytest.raises(RuntimeError, match="this batch broke"):
        alone.result.result(timeout=60)
    assert engine.stats["retried_alone"] == 0
    assert submit_all(engine, PROMPTS[:1])[0].result.result(timeout=60).token_ids


def test_a_request_cancelled_before_its_result_is_skipped(engine, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    decode = engine._decode

    def held(batch, *args):
        entered.set()
        release.wait(30)
        return decode(batch, *args)

    monkeypatch.setattr(engine, "_decode", held)
    first = submit_all(engine, PROMPTS[:1])[0]
    assert entered.wait(30)  # the worker is busy with the first
    waiting = submit_all(engine, PROMPTS[1:3])
    assert waiting[0].result.cancel()  # its client went away while it waited
    release.set()
    assert first.result.result(timeout=60).token_ids
    assert waiting[1].result.result(timeout=60).token_ids
    assert waiting[0].result.cancelled() and engine.stats["worker_errors"] == 0


def test_an_error_outside_any_batch_is_logged_and_the_worker_survives(engine, monkeypatch):
    group = engine.adapters.batch_group
    calls = {"n": 0}

    def flaky(name):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug while forming a batch")
        return group(name)

    monkeypatch.setattr(engine.adapters, "batch_group", flaky)
    request = submit_all(engine, PROMPTS[:1])[0]
    for _ in range(100):
        if engine.stats["worker_errors"]:
            break
        threading.Event().wait(0.05)
    assert engine.stats["worker_errors"] == 1 and engine.health()["worker_alive"]
    # the request it was forming is still pending and gets served on the next round
    assert request.result.result(timeout=60).token_ids


def test_a_streaming_request_whose_channel_breaks_is_cancelled_not_fatal(engine):
    def broken(text):
        raise RuntimeError("event loop is closed")

    request = Request("base", engine.ids(PROMPTS[0]), GenerationSettings(max_new_tokens=20), on_text=broken)
    engine.submit(request)
    assert request.result.result(timeout=60).finish_reason in ("cancelled", "stop", "length")
    assert engine.health()["worker_alive"] and engine.stats["failed"] == 0
