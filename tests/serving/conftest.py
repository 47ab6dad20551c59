import pytest

from tests.training.test_methods import make_config
from tunelab.models import load_model
from tunelab.serving.adapters import AdapterSet
from tunelab.training.engine import Trainer

# Every kind of adapter tunelab trains, served side by side.
KINDS = ["lora", "ia3", "prompt-tuning", "prefix-tuning", "adapter", "selective"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def _train_adapters(model_dir, dialog_file, folder):
    adapters = {}
    for kind in KINDS:
        config = make_config(model_dir, dialog_file, folder, kind, max_steps=3)
        adapters[kind] = Trainer(config, progress=False).train().artifact
    return adapters


@pytest.fixture(scope="session")
def trained_adapters(tiny_llama_dir, tiny_t5_dir, tmp_path_factory):
    """{"llama": {kind: folder}, "t5": {...}}: a few steps of each method, so each
    adapter's outputs differ from the base's."""
    from tests.conftest import DATA_ROWS
    import json

    folder = tmp_path_factory.mktemp("adapters")
    data = folder / "dialogs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DATA_ROWS))
    return {"llama": _train_adapters(tiny_llama_dir, data, folder / "llama"),
            "t5": _train_adapters(tiny_t5_dir, data, folder / "t5")}


@pytest.fixture(params=["llama", "t5"])
def arch(request):
    return request.param


@pytest.fixture
def model_dir(arch, tiny_llama_dir, tiny_t5_dir):
    return tiny_llama_dir if arch == "llama" else tiny_t5_dir


def make_pool(model_dir, adapters, allowed_dir=None):
    loaded = load_model(str(model_dir), device="cpu")
    if not loaded.is_encoder_decoder:
        loaded.tokenizer.chat_template = CHAT_TEMPLATE
    pool = AdapterSet(loaded.model, allowed_dir=allowed_dir)
    for kind, folder in adapters.items():
        pool.add(kind, folder, trusted=True)
    return loaded, pool
