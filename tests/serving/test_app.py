"""The OpenAI-compatible server on tiny Llama and T5: per-request adapters give the
offline greedy text, streaming agrees with non-streaming, the official client works,
and every bad input gets a 4xx in OpenAI's error shape."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving.conftest import KINDS, make_pool
from tunelab.web import LiveServer
from tunelab.generation import GenerationSettings, generate
from tunelab.models import load_model
from tunelab.models.adapters import load_artifact
from tunelab.serving.app import ServerSettings, create_app

PROMPTS = ["Where should we meet tomorrow?", "What time does the bank open?", "Bring an umbrella."]


@pytest.fixture
def live(request, model_dir, trained_adapters, arch, tmp_path):
    loaded, pool = make_pool(model_dir, trained_adapters[arch], allowed_dir=tmp_path)
    settings = getattr(request, "param", None) or ServerSettings(admin_token="admin-secret-token-0123456789", max_tokens_limit=64)
    server = LiveServer(create_app(loaded, pool, settings))
    server.loaded = loaded
    yield server
    server.close()


def offline(model_dir, adapter, prompts, max_new_tokens):
    loaded = load_model(str(model_dir), device="cpu")
    model = loaded.model if adapter is None else load_artifact(loaded.model, adapter)
    return [g.text for g in generate(model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens), progress=False)]


def complete(url, model, prompt, **options):
    return httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0, **options}, timeout=60)


def test_each_request_gets_its_adapter_concurrently(live, model_dir, trained_adapters, arch):
    names = ["base", *KINDS]
    expected = {n: offline(model_dir, None if n == "base" else trained_adapters[arch][n], PROMPTS, 8) for n in names}
    jobs = [(n, i) for n in names for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all at once: the batcher groups them per adapter
        answers = list(pool.map(lambda job: complete(live.url, job[0], PROMPTS[job[1]], max_tokens=8), jobs))
    for (name, i), answer in zip(jobs, answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "text_completion" and body["model"] == name
        assert body["choices"][0]["text"] == expected[name][i], (name, i)
        usage = body["usage"]
        assert usage["prompt_tokens"] == len(live.loaded.tokenizer(PROMPTS[i])["input_ids"])
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] <= 8
    stats = live.app.app.state.engine.stats
    assert stats["requests"] == len(jobs) and stats["batches"] < len(jobs)  # requests were batched
    # several prompts in one request, in order
    together = complete(live.url, "lora", PROMPTS, max_tokens=8).json()
    assert [c["text"] for c in together["choices"]] == expected["lora"]


def read_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_agrees_with_non_streaming(live, arch):
    body = {"model": "lora", "prompt": PROMPTS[0], "temperature": 0, "max_tokens": 12}
    whole = httpx.post(f"{live.url}/v1/completions", json=body, timeout=60).json()
    with httpx.stream("POST", f"{live.url}/v1/completions", json={**body, "stream": True,
                      "stream_options": {"include_usage": True}}, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = read_events(response)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]
    if arch == "t5":
        answer = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 400 and "chat template" in answer.json()["error"]["message"]
        return
    chat = {"model": "ia3", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[1]}],
            "temperature": 0, "max_tokens": 12}
    whole = httpx.post(f"{live.url}/v1/chat/completions", json=chat, timeout=60).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json={**chat, "stream": True}, timeout=60) as response:
        chunks = read_events(response)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    # the chat template was applied: the same text through /v1/completions
    rendered = live.loaded.tokenizer.apply_chat_template([m for m in chat["messages"]], tokenize=False, add_generation_prompt=True)
    assert whole["usage"]["prompt_tokens"] == len(live.loaded.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_stop_strings_n_and_seed(live, arch):
    base = {"model": "base", "prompt": PROMPTS[0], "max_tokens": 16}
    greedy = complete(live.url, **base).json()["choices"][0]["text"]
    assert len(greedy) > 4, greedy
    stop = greedy[2:4]
    cut = complete(live.url, **base, stop=stop).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and stop not in cut["text"] and greedy.startswith(cut["text"])
    sampled = httpx.post(f"{live.url}/v1/completions", json={**base, "temperature": 1.0, "n": 3, "seed": 7}, timeout=60).json()
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in sampled["choices"]}) > 1  # n samples, not one copied
    again = httpx.post(f"{live.url}/v1/completions", json={**base, "temperature": 1.0, "n": 3, "seed": 7}, timeout=60).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in sampled["choices"]]  # a seed repeats


def test_the_official_openai_client(live, arch):
    from openai import OpenAI

    client = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"base", *KINDS}
    completion = client.completions.create(model="prefix-tuning", prompt=PROMPTS[2], max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="prefix-tuning", prompt=PROMPTS[2], max_tokens=6, temperature=0, stream=True))
    assert completion.choices[0].text == streamed and completion.usage.completion_tokens <= 6
    if arch == "llama":
        chat = client.chat.completions.create(model="adapter", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="adapter", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0, stream=True))
        assert chat.choices[0].message.content == streamed
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
def test_bad_inputs_get_openai_errors(live):
    url = live.url + "/v1/completions"
    cases = [
        (dict(json={"model": "nope", "prompt": "hi"}), 404, "model_not_found"),
        (dict(json={"model": "base", "prompt": "hi", "max_tokens": 1000}), 400, "at most 64"),
        (dict(json={"model": "base", "prompt": "hi", "max_tokens": 0}), 400, "max_tokens"),
        (dict(json={"model": "base", "prompt": "hi", "temprature": 0.5}), 400, "temprature"),
        (dict(json={"model": "base", "prompt": "hi", "logprobs": 3}), 400, "'logprobs' is not supported"),
        (dict(json={"model": "base"}), 400, "prompt"),
        (dict(json={"model": "base", "prompt": ""}), 400, "non-empty"),
        (dict(json={"model": "base", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}), 400, "stop"),
        (dict(json={"model": "base", "prompt": ["hi"] * 40}), 400, "per request"),
        (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"[]", headers={"Content-Type": "application/json"}), 400, ""),
        (dict(content=b"{}", headers={"Content-Type": "text/plain"}), 415, "JSON"),
        (dict(json={"model": "base", "prompt": "x" * 2_000_000}), 413, "over"),
        (dict(json={"model": "base", "prompt": "hi", "temperature": 1, "seed": 10**30}), 400, "seed"),
        (dict(json={"model": "base", "prompt": "hi", "n": 1000}), 400, "n"),
    ]
    for kwargs, status, message in cases:
        answer = httpx.post(url, timeout=30, **kwargs)
        assert answer.status_code == status, (kwargs.get("json", kwargs.get("content"))[:80] if isinstance(kwargs.get("content"), bytes) else kwargs, answer.text)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert message in error["message"] or message == error["code"], answer.text
    chat = httpx.post(live.url + "/v1/chat/completions", json={"model": "base", "messages": [{"role": "robot", "content": "hi"}]})
    assert chat.status_code == 400 and "messages.0.role" in chat.json()["error"]["message"]
    long = httpx.post(url, json={"model": "base", "prompt": "hello " * 600, "max_tokens": 8})
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
def test_admin_loads_and_unloads_from_the_allowed_dir_only(live, trained_adapters, tmp_path):
    lora = trained_adapters["llama"]["lora"]
    (tmp_path / "mine").mkdir()
    for f in lora.iterdir():
        (tmp_path / "mine" / f.name).write_bytes(f.read_bytes())
    admin = {"Authorization": "Bearer admin-secret-token-0123456789"}
    assert httpx.post(live.url + "/admin/adapters", json={"name": "mine", "path": "mine"}).status_code == 401
    assert httpx.post(live.url + "/admin/adapters", json={"name": "mine", "path": "mine"}, headers={"Authorization": "Bearer x"}).status_code == 401
    escape = httpx.post(live.url + "/admin/adapters", json={"name": "out", "path": str(lora)}, headers=admin)
    assert escape.status_code == 403 and "outside the allowed directory" in escape.json()["error"]["message"]
    (tmp_path / "broken").mkdir()  # a config that is not JSON: 422, not a crash
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(b"junk")
    broken = httpx.post(live.url + "/admin/adapters", json={"name": "broken", "path": "broken"}, headers=admin)
    assert broken.status_code == 422 and "cannot be loaded" in broken.json()["error"]["message"]
    loaded = httpx.post(live.url + "/admin/adapters", json={"name": "mine", "path": "mine"}, headers=admin, timeout=60)
    assert loaded.status_code == 201 and loaded.json()["kind"] == "lora"
    assert complete(live.url, "mine", PROMPTS[0], max_tokens=6).json()["choices"][0]["text"] == \
        complete(live.url, "lora", PROMPTS[0], max_tokens=6).json()["choices"][0]["text"]
    assert "mine" in {a["name"] for a in httpx.get(live.url + "/admin/adapters", headers=admin).json()["adapters"]}
    assert httpx.delete(live.url + "/admin/adapters/mine", headers=admin).status_code == 200
    assert complete(live.url, "mine", PROMPTS[0]).status_code == 404


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
@pytest.mark.parametrize("live", [ServerSettings(api_keys=("k1", "k2"))], indirect=True)
def test_api_keys_and_no_admin(live):
    assert httpx.get(live.url + "/v1/models").status_code == 401
    wrong = httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer k3"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    off = httpx.get(live.url + "/admin/adapters", headers={"Authorization": "Bearer k2"})
    assert off.status_code == 403 and "--admin-token" in off.json()["error"]["message"]


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
@pytest.mark.parametrize("live", [ServerSettings(max_queue=2, max_tokens_limit=512)], indirect=True)
def test_full_queue_is_429_and_a_gone_client_frees_its_slot(live, monkeypatch):
    engine = live.app.app.state.engine
    release = threading.Event()
    original = engine._generate

    entered = threading.Event()

    def held(batch):
        entered.set()
        release.wait(30)
        original(batch)

    monkeypatch.setattr(engine, "_generate", held)
    first = ThreadPoolExecutor(1).submit(complete, live.url, "base", PROMPTS[0], max_tokens=2)
    assert entered.wait(30)  # the worker holds the first request
    full = complete(live.url, "base", PROMPTS, max_tokens=2)  # three more: over the bound of 2
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
    release.set()
    assert first.result().status_code == 200
    monkeypatch.setattr(engine, "_generate", original)
    for _ in range(200):  # the refused request's parts that were queued leave the queue, cancelled
        if engine.waiting == 0 and engine.stats["cancelled"] == 2:
            break
        threading.Event().wait(0.05)
    assert engine.waiting == 0 and engine.stats["cancelled"] == 2
    # a streaming client that goes away after the first piece: its row leaves the batch
    # (each token made slow, so the 200 cannot all be made before the server notices)
    from tunelab.serving.engine import TextDeltas

    push = TextDeltas.push
    monkeypatch.setattr(TextDeltas, "push", lambda self, token: (threading.Event().wait(0.01), push(self, token))[1])
    before, cancelled = engine.stats["tokens"], engine.stats["cancelled"]
    with httpx.stream("POST", live.url + "/v1/completions", timeout=60,
                      json={"model": "base", "prompt": PROMPTS[1], "max_tokens": 200, "temperature": 1.0, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    for _ in range(200):
        if engine.stats["cancelled"] > cancelled:
            break
        threading.Event().wait(0.05)
    assert engine.stats["cancelled"] == cancelled + 1 and engine.waiting == 0, (engine.stats, before)
    assert engine.stats["tokens"] - before < 200
