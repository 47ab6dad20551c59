"""RLOO and GRPO (stage rloo / grpo: PPO's trainer with a group baseline and no value
head) on a tiny Llama and T5, tested as PPO is: KL 0 before the first update, the
reference unchanged, a toy reward learnt, an exact resume; and the held-out evaluation
every online method writes (eval.json, eval_before/after.jsonl)."""

import json

import pytest
import torch

from tests.conftest import DATA_ROWS

from tests.alignment.test_ppo import count_reward, frozen_reference, metrics, ppo_config, resume_after_a_crash, toy
from tunelab.alignment.policy_eval import Monitor
from tunelab.alignment.ppo import PPOTrainer


def group_config(stage, model_dir, data, tmp_path, method="lora", steps=4, **ppo):
    config = ppo_config(model_dir, data, tmp_path / stage, method, steps, **{"rollout_batch_size": 3, "group_size": 3, **ppo})
    config.stage = stage
    return config


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_kl_starts_at_zero_the_reference_never_changes_and_there_is_no_value_head(stage, method, tiny_model_dir, dialog_file, tmp_path):
    target, _ = toy(tiny_model_dir)
    seen = []

    def reward(prompts, responses):
        seen.append(list(prompts))
        return count_reward(target)(prompts, responses)

    trainer = PPOTrainer(group_config(stage, tiny_model_dir, dialog_file, tmp_path, method), reward=reward, progress=False)
    assert trainer.value_head is None and not any("value_head" in k for k in trainer._trainable())
    reference = frozen_reference(trainer)
    result = trainer.train()
    rows = metrics(trainer)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["kl"] != pytest.approx(0.0, abs=1e-5)
    assert "value_loss" not in rows[-1] and ("kl_loss" in rows[-1]) == (stage == "grpo")
    for name, value in reference.items():
        assert torch.equal(value, frozen_reference(trainer)[name]), f"reference {name} changed"
    # each step scores 3 prompts x 3 samples, the samples of a prompt side by side
    assert all(len(step) == 9 and all(len(set(step[i : i + 3])) == 1 for i in (0, 3, 6)) for step in seen)
    assert not (result.artifact / "value_head.safetensors").exists()
    assert (trainer.output_dir / f"{stage}.png").is_file()


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_a_toy_reward_is_learnt(stage, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**r, "fname": f"{r['fname']}-{i}"}) + "\n" for i in range(4) for r in DATA_ROWS))
    target, _ = toy(tiny_model_dir)
    config = group_config(stage, tiny_model_dir, prompts, tmp_path, steps=30, rollout_batch_size=4, group_size=4,
                          mini_batch_size=8, ppo_epochs=4, max_kl=1e9)
    trainer = PPOTrainer(config, reward=count_reward(target), progress=False)
    trainer.train()
    scores = [r["score"] for r in metrics(trainer)]
    first, last = sum(scores[:2]) / 2, sum(scores[-5:]) / 5
    assert last >= 1.0, scores
    assert last > 3 * first + 0.5, scores


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_kill_and_resume_gives_the_same_weights(stage, tiny_llama_dir, dialog_file, tmp_path, monkeypatch):
    target, _ = toy(tiny_llama_dir)
    settings = dict(steps=5, kl_coef=0.1, adaptive_kl=True, normalize_reward=True)
    straight = PPOTrainer(group_config(stage, tiny_llama_dir, dialog_file, tmp_path / "a", **settings),
                          reward=count_reward(target), progress=False)
    straight.config.save_steps = 2
    straight.train()
    config = group_config(stage, tiny_llama_dir, dialog_file, tmp_path / "b", **settings)
    resumed = resume_after_a_crash(config, 3, count_reward(target), monkeypatch)
    assert resumed.kl.value == pytest.approx(straight.kl.value)
    assert resumed.moments.state_dict() == straight.moments.state_dict()
    expected = straight._trainable()
    for name, value in resumed._trainable().items():
        assert torch.equal(value, expected[name]), f"{name} differs after resume"


class FakeClassifier:
    """A two-class 'classifier' reward: P(good) grows with the response's length."""

    labels, label_index = ["bad", "good"], 1

    def logits(self, prompts, responses):
        lengths = torch.tensor([len(r) / 10 for r in responses])
        return torch.stack([-lengths, lengths], dim=1)

    def probabilities(self, logits):
        return logits.softmax(-1)

    def reward_from_logits(self, logits):
        return logits[:, 1]

    def __call__(self, prompts, responses):
        return self.reward_from_logits(self.logits(prompts, responses))


def test_held_out_evaluation_before_and_after(tiny_llama_dir, dialog_file, tmp_path):
    config = group_config("grpo", tiny_llama_dir, dialog_file, tmp_path, steps=2)
    config.eval_data, config.eval_split, config.eval_limit = str(dialog_file), None, 4
    seen_prompts = []

    def monitor_reward(prompts, responses):  # a second scorer, reported and never trained on
        seen_prompts.extend(prompts)
        return [-float(len(r)) for r in responses]

    monitor = Monitor(monitor_reward, "Human: {input}\nAssistant:")
    trainer = PPOTrainer(config, reward=FakeClassifier(), monitor=monitor, progress=False)
    result = trainer.train()
    comparison = json.loads((trainer.output_dir / "eval.json").read_text())
    assert result.summary["eval"] == comparison
    for name in ("before", "after"):
        summary = comparison[name]
        for key in ("n", "reward_mean", "label_probability_mean", "response_tokens_mean", "distinct_2", "rouge1"):
            assert key in summary, key
        assert summary["n"] == 4 and summary["label"] == "good" and 0 <= summary["distinct_2"] <= 1
        lines = [json.loads(x) for x in (trainer.output_dir / f"eval_{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 4 and {"prompt", "response", "tokens", "score", "label_probability"} <= set(lines[0])
        assert summary["label_probability_mean"] == pytest.approx(sum(x["label_probability"] for x in lines) / 4)
        assert summary["monitor_reward_mean"] == pytest.approx(sum(x["monitor_score"] for x in lines) / 4)
        assert all(x["monitor_score"] == -len(x["response"]) for x in lines)
    assert len(seen_prompts) == 8 and all(p.startswith("Human: ") and p.endswith("\nAssistant:") for p in seen_prompts)
    assert "{input}" not in seen_prompts[0]


def test_group_recipe_errors():
    from tunelab.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="stage rloo needs ppo.reward"):
        load_recipe(None, ["stage=rloo"])
    with pytest.raises(RecipeError, match="stage grpo needs ppo.group_size >= 2"):
        load_recipe(None, ["stage=grpo", "ppo.reward=x:y", "ppo.group_size=1"])
