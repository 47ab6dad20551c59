"""Every method on a tiny Llama and a tiny T5: it learns, trains exactly what it should,
and its artifact reloads to the same outputs."""

import json

import pytest
import torch

from tunelab.models import load_model
from tunelab.models.adapters import load_artifact
from tunelab.recipe import TrainConfig
from tunelab.training.engine import Trainer

LEARNING_RATES = {
    "full": 1e-3, "selective": 1e-2, "lora": 1e-2, "prompt-tuning": 5e-2,
    "prefix-tuning": 1e-2, "ia3": 5e-2, "adapter": 1e-2,
}


def make_config(model_dir, data, tmp_path, method, **overrides):
    config = TrainConfig(
        method=method, model=str(model_dir), data=str(data), split=None, max_steps=8, batch_size=2,
        learning_rate=LEARNING_RATES[method], warmup_ratio=0.0, chat_template="off", max_length=64,
        output_dir=str(tmp_path / f"run-{method}"), seed=0,
    )
    config.selective.patterns = [r"(layers|block)\.1\."]
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def losses(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def sample_batch(trainer):
    return trainer._batch([0, 1], trainer.rows)


def data_loss(trainer):
    """Loss over every training row at once, dropout off: comparable before and after."""
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.model(**trainer._batch(list(range(len(trainer.rows))), trainer.rows)).loss)
    trainer.model.train()
    return loss


@pytest.mark.parametrize("method", list(LEARNING_RATES))
def test_method_learns_trains_what_it_should_and_reloads(method, tiny_model_dir, dialog_file, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    originals = [(p, p.detach().clone()) for p in loaded.model.parameters()]
    trainer = Trainer(make_config(tiny_model_dir, dialog_file, tmp_path, method), loaded, progress=False)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    before = data_loss(trainer)
    result = trainer.train()

    curve = losses(result.output_dir)
    assert len(curve) == 8 and all(map(torch.isfinite, torch.tensor(curve)))
    after = data_loss(trainer)
    assert after < before, f"loss on the training rows did not drop: {before:.4f} -> {after:.4f}"
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable
    for name, parameter in trainer.model.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, initial[name]), f"trainable {name} did not change"
    for parameter, before in originals:
        if not parameter.requires_grad:
            assert torch.equal(parameter, before), "a frozen base parameter changed"

    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["trainable_params"] == sum(trainer.model.get_parameter(n).numel() for n in trainable)
    assert 0 < summary["trainable_percent"] <= 100 and summary["artifact_mb"] > 0
    assert (result.output_dir / "loss.png").stat().st_size > 1000

    batch = sample_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        if method == "full":
            reloaded = load_model(str(result.artifact), device="cpu").model
        else:
            reloaded = load_artifact(load_model(str(tiny_model_dir), device="cpu").model, result.artifact)
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)


def test_lora_merge_matches_unmerged(tiny_model_dir, dialog_file, tmp_path):
    from tunelab.training.methods.lora import merge

    trainer = Trainer(make_config(tiny_model_dir, dialog_file, tmp_path, "lora", max_steps=3), load_model(str(tiny_model_dir), device="cpu"), progress=False)
    trainer.train()
    batch = sample_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        unmerged = trainer.model(**batch).logits
        with trainer.model.disable_adapter():
            base = trainer.model(**batch).logits
        merged_model = merge(trainer.model)
        assert not hasattr(merged_model, "peft_config")
        merged = merged_model(**batch).logits
    # Folding changes float rounding only: far smaller than what the adapter changes.
    scale = unmerged.abs().max()
    assert (merged - unmerged).abs().max() < 2e-3 * scale
    assert (base - unmerged).abs().max() > 50 * (merged - unmerged).abs().max()


@pytest.mark.parametrize("variant", [{"bitfit": True, "patterns": []}, {"last_n_blocks": 1, "patterns": []}])
def test_selective_variants(variant, tiny_model_dir, dialog_file, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    config = make_config(tiny_model_dir, dialog_file, tmp_path, "selective", max_steps=2)
    for key, value in variant.items():
        setattr(config.selective, key, value)
    trainer = Trainer(config, loaded, progress=False)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    if "bitfit" in variant:
        assert names and all(n.endswith(".bias") for n in names)
    else:
        assert names and all((".1." in n) for n in names)  # the last of 2 blocks
    trainer.train()
