"""Both tiny agent models (tokenizers with every byte: see tests/conftest.py)."""

import pytest


@pytest.fixture(params=["llama", "t5"])
def agent_model(request, agent_llama_dir, agent_t5_dir):
    from tunelab.models import load_model

    return load_model(str(agent_llama_dir if request.param == "llama" else agent_t5_dir), device="cpu")
