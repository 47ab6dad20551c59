"""Every adapter load passes one safetensors-only check, whatever the artifact's format."""

import json

import pytest

from tunelab.errors import MethodError
from tunelab.models.adapters import ARTIFACT_CONFIG, PEFT_CONFIG, adapter_kind, load_artifact


@pytest.mark.parametrize("config, content", [(PEFT_CONFIG, {"peft_type": "LORA"}), (ARTIFACT_CONFIG, {"method": "selective"})])
def test_pickled_adapter_weights_are_refused(config, content, tmp_path):
    (tmp_path / config).write_text(json.dumps(content))
    (tmp_path / "adapter_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(MethodError, match=r"no adapter_model.safetensors; pickled weights \(adapter_model.bin\) are never loaded"):
        load_artifact(None, tmp_path)


def test_folders_that_hold_no_adapter_say_what_they_are(tmp_path):
    with pytest.raises(MethodError, match="not an adapter folder"):
        adapter_kind(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MethodError, match="whole model .*pass it as --model"):
        load_artifact(None, tmp_path)
