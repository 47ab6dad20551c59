"""Tiny random models (hidden size 64, 2 layers) and a tokenizer trained here: no hub,
no network, seconds per test. Real-model tests are marked `slow`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_ROWS = [
    {"fname": "d1", "dialogue": "#Person1#: Hello, how are you?\n#Person2#: Fine, thanks.", "summary": "They greet each other."},
    {"fname": "d2", "dialogue": "#Person1#: Where is the bank?\n#Person2#: Next to the park.", "summary": "Person2 tells Person1 where the bank is."},
    {"fname": "d3", "dialogue": "#Person1#: I want a ticket to Paris.\n#Person2#: That is 50 dollars.", "summary": "Person1 buys a ticket to Paris."},
    {"fname": "d4", "dialogue": "#Person1#: The meeting is at noon.\n#Person2#: I will be there.", "summary": "They agree to meet at noon."},
    {"fname": "d5", "dialogue": "#Person1#: Can you help me with my homework?\n#Person2#: Sure, what subject?", "summary": "Person2 offers homework help."},
    {"fname": "d6", "dialogue": "#Person1#: It is raining again.\n#Person2#: Take an umbrella then.", "summary": "Person2 suggests an umbrella."},
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(all_bytes: bool = False, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on the test dialogues. ``all_bytes``: its alphabet
    holds every byte (as real tokenizers' do), so any text, JSON included, can be written."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    corpus = [r["dialogue"] + " " + r["summary"] for r in DATA_ROWS] * 3
    corpus += ["Summarize the following conversation. Summary: system user assistant"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet() if all_bytes else []
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=alphabet, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(train_tokenizer(), tmp_path_factory.mktemp("tiny-llama"))


def make_tiny_llama(tokenizer, folder: Path, context: int = 256) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return _save(LlamaForCausalLM(config), tokenizer, folder)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return make_tiny_t5(train_tokenizer(), tmp_path_factory.mktemp("tiny-t5"))


def make_tiny_t5(tokenizer, folder: Path) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer.model_max_length = 128
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, initializer_factor=1.5,
    )
    torch.manual_seed(0)
    return _save(T5ForConditionalGeneration(config), tokenizer, folder)


@pytest.fixture(scope="session")
def agent_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer holds every byte, so that JSON and code can be written
    (the shared tiny tokenizer only knows the bytes of the test dialogues)."""
    return make_tiny_llama(train_tokenizer(all_bytes=True, vocab_size=400), tmp_path_factory.mktemp("agent-llama"),
                           context=8192)  # room for tool descriptions and agent frameworks' prompts


@pytest.fixture(scope="session")
def agent_t5_dir(tmp_path_factory) -> Path:
    return make_tiny_t5(train_tokenizer(all_bytes=True, vocab_size=400), tmp_path_factory.mktemp("agent-t5"))


@pytest.fixture(params=["llama", "t5"])
def tiny_model_dir(request, tiny_llama_dir, tiny_t5_dir) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_t5_dir


@pytest.fixture
def tiny_model(tiny_model_dir):
    from tunelab.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def dialog_file(tmp_path) -> Path:
    path = tmp_path / "dialogs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in DATA_ROWS), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Conversions go to a per-test cache unless a test (slow ones) opts into the user's."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "tunelab-cache"))


_USER_CACHE = os.environ.get("TUNELAB_CACHE")


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default, converted once into the user's cache (slow tests)."""
    from tunelab.models import load_model

    saved = os.environ.pop("TUNELAB_CACHE", None)
    if _USER_CACHE:
        os.environ["TUNELAB_CACHE"] = _USER_CACHE
    try:
        return load_model("smollm2-135m-instruct", device="cpu")
    finally:
        os.environ.pop("TUNELAB_CACHE", None)
        if saved is not None:
            os.environ["TUNELAB_CACHE"] = saved
