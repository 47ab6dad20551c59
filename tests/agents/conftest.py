"""Tiny random models whose tokenizer holds every byte, so that JSON and code can be
written (the shared tiny tokenizer only knows the bytes of the test dialogues)."""

from pathlib import Path

import pytest

from tests.conftest import make_tiny_llama, make_tiny_t5, train_tokenizer


@pytest.fixture(scope="session")
def agent_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(train_tokenizer(all_bytes=True, vocab_size=400), tmp_path_factory.mktemp("agent-llama"))


@pytest.fixture(scope="session")
def agent_t5_dir(tmp_path_factory) -> Path:
    return make_tiny_t5(train_tokenizer(all_bytes=True, vocab_size=400), tmp_path_factory.mktemp("agent-t5"))


@pytest.fixture(params=["llama", "t5"])
def agent_model(request, agent_llama_dir, agent_t5_dir):
    from tunelab.models import load_model

    return load_model(str(agent_llama_dir if request.param == "llama" else agent_t5_dir), device="cpu")
