"""DPO and IPO on a tiny Llama and T5: chosen-over-rejected accuracy rises; the reference
(precomputed, adapter-disabled or a frozen copy) agrees and never changes."""

import json

import pytest
import torch

from tests.alignment.test_reward import config_for, pairs_file  # noqa: F401  (fixture)
from tunelab.alignment.dpo import DPOTrainer, sequence_logps
from tunelab.errors import DataError
from tunelab.recipe import RecipeError, load_recipe


def logp_margin(trainer):
    """Mean log pi(chosen) - log pi(rejected) over the training pairs."""
    trainer.model.eval()
    with torch.no_grad():
        batch = trainer._batch(list(range(len(trainer.rows))), trainer.rows)
        logps, _ = sequence_logps(trainer.model, batch, trainer.loaded.is_encoder_decoder)
    chosen, rejected = logps.chunk(2)
    return (chosen - rejected).mean().item()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_raises_chosen_over_rejected(method, tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    config = config_for("dpo", tiny_model_dir, pairs_file, tmp_path, method, max_steps=12)
    trainer = DPOTrainer(config, progress=False)
    before = logp_margin(trainer)
    result = trainer.train()
    assert result.summary["eval_reward_accuracy"] == 1.0
    assert result.summary["eval_reward_margin"] > 0.5
    assert logp_margin(trainer) > before + 5
    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
    assert logged[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_precomputed_and_live_references_agree(method, tiny_llama_dir, pairs_file, tmp_path):  # noqa: F811
    losses = {}
    for precompute in (True, False):
        config = config_for("dpo", tiny_llama_dir, pairs_file, tmp_path / str(precompute), method, max_steps=3)
        config.dpo.precompute_reference = precompute
        trainer = DPOTrainer(config, progress=False)
        if not precompute and method == "full":
            frozen = {k: v.clone() for k, v in trainer.reference_model.state_dict().items()}
        trainer.train()
        rows = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
        losses[precompute] = [r["loss"] for r in rows if "loss" in r]
        if not precompute and method == "full":
            for name, value in trainer.reference_model.state_dict().items():
                assert torch.equal(value, frozen[name]), f"reference {name} changed"
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_ipo_trains(tiny_t5_dir, pairs_file, tmp_path):  # noqa: F811
    config = config_for("dpo", tiny_t5_dir, pairs_file, tmp_path, "lora", max_steps=12)
    config.dpo.loss_type, config.dpo.beta = "ipo", 0.5
    result = DPOTrainer(config, progress=False).train()
    assert result.summary["eval_reward_accuracy"] == 1.0


def test_dpo_bad_input(tiny_llama_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no preference pairs"):
        DPOTrainer(config_for("dpo", tiny_llama_dir, empty, tmp_path), progress=False)
    with pytest.raises(RecipeError, match="stage 'dpo' does not take soft prompts"):
        load_recipe(None, ["stage=dpo", "method=prompt-tuning"])
    with pytest.raises(RecipeError, match="unknown stage 'dop'; did you mean 'dpo'"):
        load_recipe(None, ["stage=dop"])
    with pytest.raises(RecipeError, match="dpo.loss_type must be sigmoid or ipo"):
        load_recipe(None, ["stage=dpo", "dpo.loss_type=hinge"])
