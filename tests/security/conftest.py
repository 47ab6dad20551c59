"""Real servers for the attack suite: `tunelab serve` and `tunelab label serve`, each in a
process of its own on a loopback port, started from their command lines (keys from
files), with short timeouts so each attack ends in seconds."""

from __future__ import annotations

import json

import httpx
import pytest

from tunelab.webprobe import ServerProcess

API_KEY = "test-api-key-0123456789abcdef"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
SLIDING_WINDOW = 96
# A template that refuses a conversation opening with the assistant, as many real ones do.
STRICT_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('a conversation starts with a user turn') }}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LIMITS = ["--header-timeout", "1", "--body-timeout", "8", "--keep-alive-timeout", "1", "--send-timeout", "1",
          "--max-connections", "32"]


def lora_adapter(model_dir, folder, seed):
    """A LoRA adapter with random (non-zero) weights: its outputs differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def served_model(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with a strict chat template and a sliding attention window (tunelab's
    batched generation keeps each batch within it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("served-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.config.sliding_window = SLIDING_WINDOW
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = STRICT_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def adapter_dir(served_model, tmp_path_factory):
    """The allowed directory holds a good adapter; a secret one lies outside it."""
    root = tmp_path_factory.mktemp("adapters")
    allowed = root / "allowed"
    allowed.mkdir()
    lora_adapter(served_model, allowed / "good", seed=1)
    lora_adapter(served_model, root / "secret", seed=2)
    return allowed


@pytest.fixture(scope="session")
def serving(served_model, adapter_dir, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "keys").write_text(f"# one key per line\n{API_KEY}\n")
    (secrets / "admin").write_text(ADMIN_TOKEN + "\n")
    server = ServerProcess(["serve", "--model", str(served_model), "--api-key-file", str(secrets / "keys"),
                            "--admin-token-file", str(secrets / "admin"), "--adapter-dir", str(adapter_dir),
                            "--batch-wait-ms", "300", "--max-tokens-limit", "64", *LIMITS])
    server.headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(3):  # warm up: first requests allocate what every later one reuses
        legit_completion(server)()
    yield server
    server.close()


@pytest.fixture(scope="session")
def labeling(tmp_path_factory):
    from tunelab.feedback.store import LabelStore

    db = tmp_path_factory.mktemp("labeling") / "labels.sqlite"
    store = LabelStore(db, create=True)
    store.set_setting("labels_per_prompt", "2")
    for i in range(4):
        store.add_prompt(f"Prompt {i}?", [f"answer {i}a", f"answer {i}b", f"answer {i}c"])
    tokens = {name: store.add_user(name) for name in ("ann", "bob")}
    store.close()
    server = ServerProcess(["label", "serve", "--db", str(db), *LIMITS], ready_path="/login")
    server.tokens = tokens
    for _ in range(3):
        legit_labeling(server)()
    yield server
    server.close()


def legit_completion(server):
    return lambda: httpx.post(server.url + "/v1/completions", headers=server.headers, timeout=30,
                              json={"model": "base", "prompt": "Hello there", "max_tokens": 2, "temperature": 0})


def legit_labeling(server):
    return lambda: httpx.get(server.url + "/api/progress", headers={"Authorization": f"Bearer {server.tokens['ann']}"}, timeout=30)


def dumps(value) -> bytes:
    return json.dumps(value).encode()
