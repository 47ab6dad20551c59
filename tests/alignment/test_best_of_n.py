"""Best-of-n: the selection rule, `tunelab prompt --best-of N --reward`, and rejection-
sampling fine-tuning (stage rejection-sampling) on a tiny Llama and T5."""

import json

import pytest
import torch

from tests.alignment.test_ppo import count_reward, metrics, ppo_config, prompts_of_three_lengths, toy
from tunelab.alignment.best_of_n import RejectionSamplingTrainer, best_and_worst, choose, pick_best
from tunelab.alignment.rollout_dpo import RolloutDPOTrainer
from tunelab.errors import PromptError, TunelabError
from tunelab.generation import GenerationSettings
from tunelab.jobs import PromptJob, run_prompt
from tunelab.models import load_model


def test_pick_best_is_the_argmax_of_each_group():
    assert pick_best([0.1, 0.9, 0.5, 3.0, -1.0, 2.0], 3) == [1, 0]
    assert pick_best([1.0, 1.0, 0.0, 2.0], 2) == [0, 1]  # a tie goes to the earlier sample
    assert pick_best([0.3, 0.2], 1) == [0, 0]
    with pytest.raises(ValueError, match="groups of 4"):
        pick_best([1.0, 2.0, 3.0], 4)


def test_best_and_worst_pairs_each_group_and_skips_a_group_without_preference():
    assert best_and_worst([0.1, 0.9, 0.5, 3.0, -1.0, 2.0], 3) == [(1, 0), (0, 1)]
    assert best_and_worst([1.0, 1.0, 0.0, 2.0, 2.0, 2.0], 3) == [(0, 2), None]  # ties: the earlier sample
    with pytest.raises(ValueError, match="groups of 2"):
        best_and_worst([1.0, 2.0, 3.0], 2)
    with pytest.raises(ValueError, match="n >= 2"):
        best_and_worst([1.0, 2.0], 1)


def test_choose_asks_the_scorer_with_each_prompt_beside_its_samples():
    seen = []

    def fake(prompts, responses):
        seen.append((list(prompts), list(responses)))
        return [float(r.count("!")) for r in responses]

    best, scores = choose(["p", "q"], ["a!", "b!!", "c", "d", "e!!!", "f!"], 3, fake)
    assert best == [1, 1] and scores == [1.0, 2.0, 0.0, 0.0, 3.0, 1.0]
    assert seen == [(["p", "p", "p", "q", "q", "q"], ["a!", "b!!", "c", "d", "e!!!", "f!"])]


def test_prompt_best_of_n_answers_with_the_highest_scored_sample(tiny_model_dir, dialog_file):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    job = PromptJob(data=str(dialog_file), model=str(tiny_model_dir), chat_template="off", best_of=4,
                    reward="tests.alignment.rewards:length",
                    generation=GenerationSettings(max_new_tokens=8, batch_size=8, seed=1))
    rows = run_prompt(job, loaded, progress=False)
    assert job.generation.do_sample  # best-of-n samples
    for row in rows:
        candidates = row["candidates"]
        assert row["best_of"] == 4 and len(candidates) == 4
        assert all(c["score"] == float(len(c["text"])) for c in candidates)
        assert row["score"] == max(c["score"] for c in candidates)
        assert row["prediction"] == next(c["text"] for c in candidates if c["score"] == row["score"])
    assert len({c["text"] for row in rows for c in row["candidates"]}) > len(rows)  # the samples differ


@pytest.mark.parametrize("options, message", [
    ({"best_of": 3}, "needs --reward"),
    ({"reward": "tests.alignment.rewards:length"}, "give --best-of N"),
    ({"best_of": 0, "reward": "x:y"}, "must be >= 1"),
])
def test_best_of_n_option_errors(options, message, dialog_file):
    with pytest.raises(PromptError, match=message):
        run_prompt(PromptJob(data=str(dialog_file), **options), progress=False)


def test_rejection_sampling_fine_tunes_on_the_best_samples(tiny_model_dir, dialog_file, tmp_path):
    target, _ = toy(tiny_model_dir)
    config = ppo_config(tiny_model_dir, dialog_file, tmp_path, steps=3, group_size=4)
    config.stage, config.batch_size = "rejection-sampling", 2
    config.eval_data, config.eval_split, config.eval_limit = str(dialog_file), None, 3
    trainer = RejectionSamplingTrainer(config, reward=count_reward(target), progress=False)
    prompts = [r["text"] for r in trainer.rows]
    result = trainer.train()
    kept = [json.loads(x) for x in (trainer.output_dir / "best_of_n.jsonl").read_text().splitlines()]
    assert [k["prompt"] for k in kept] == prompts
    for k in kept:
        assert len(k["scores"]) == 4 and k["score"] == max(k["scores"])
        assert k["score"] == float(k["response"].count(target))
    # the rows trained on are the kept samples, loss on the response only
    assert sorted(len(r["labels"]) for r in trainer.rows) == sorted(
        (len(k["response_ids"]) if trainer.loaded.is_encoder_decoder else len(k["prompt_ids"]) + len(k["response_ids"])) for k in kept)
    assert len(metrics(trainer)) >= 3 and result.summary["sampling_seconds"] >= 0
    comparison = json.loads((trainer.output_dir / "eval.json").read_text())
    assert comparison["before"]["n"] == comparison["after"]["n"] == 3
    assert (result.artifact / "adapter_config.json").is_file()


def rollout_dpo_config(model_dir, data, tmp_path, steps=3):
    config = ppo_config(model_dir, data, tmp_path, steps=steps, group_size=4)
    config.stage, config.batch_size, config.learning_rate = "rollout-dpo", 2, config.learning_rate / 2
    config.eval_data, config.eval_split, config.eval_limit = str(data), None, 3
    return config


def test_rollout_dpo_pairs_the_best_and_worst_samples_and_trains_on_them(tiny_model_dir, dialog_file, tmp_path):
    target, _ = toy(tiny_model_dir)
    config = rollout_dpo_config(tiny_model_dir, dialog_file, tmp_path)
    config.eval_seconds = 1e-9  # a held-out evaluation after every step but the last
    trainer = RolloutDPOTrainer(config, reward=count_reward(target), progress=False)
    prompts = [r["text"] for r in trainer.rows]
    result = trainer.train()
    pairs = [json.loads(x) for x in (trainer.output_dir / "rollout_pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["prompt"] for p in pairs} <= set(prompts)
    for p in pairs:
        assert p["chosen_score"] == max(p["scores"]) > p["rejected_score"] == min(p["scores"])
        assert p["chosen_score"] == float(p["chosen"].count(target))
    assert len(trainer.rows) == len(pairs) == result.summary["pairs"]
    records = metrics(trainer)
    steps = [r for r in records if "reward_accuracy" in r]
    assert len(steps) == 3 and steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy = reference at first
    curve = [r for r in records if "heldout_reward_mean" in r]
    assert [r["step"] for r in curve] == [1, 2] and (trainer.output_dir / "eval_step-1.jsonl").is_file()
    comparison = json.loads((trainer.output_dir / "eval.json").read_text())
    assert comparison["before"]["n"] == comparison["after"]["n"] == 3
    assert result.summary["sampling_seconds"] > 0 and (result.artifact / "adapter_config.json").is_file()


@pytest.mark.parametrize("stage", ["rejection-sampling", "rollout-dpo"])
def test_a_resumed_sampling_run_reuses_its_samples(stage, tiny_llama_dir, dialog_file, tmp_path, monkeypatch):
    target, _ = toy(tiny_llama_dir)
    if stage == "rollout-dpo":
        trainer_class, sampler, config = RolloutDPOTrainer, "make_pairs", rollout_dpo_config(tiny_llama_dir, dialog_file, tmp_path, steps=4)
    else:
        trainer_class, sampler = RejectionSamplingTrainer, "sample"
        config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, steps=4, group_size=2)
        config.stage, config.batch_size = "rejection-sampling", 2
    config.save_steps, config.eval_data = 2, None
    straight = trainer_class(config, reward=count_reward(target), progress=False)
    sampled = straight.train().summary["sampling_seconds"]
    expected = {k: v.clone() for k, v in straight._trainable().items()}
    (straight.output_dir / "checkpoints" / "latest").write_text("step-2")
    again = trainer_class(config, reward=count_reward(target), progress=False)
    monkeypatch.setattr(again, sampler, lambda: pytest.fail("a resumed run must not sample again"))
    assert again.train(resume=True).summary["sampling_seconds"] == sampled > 0  # its time comes back with it
    for name, value in again._trainable().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("stage", ["rejection-sampling", "rollout-dpo"])
def test_sampling_stages_keep_the_recipes_hardest_prompts(stage, tiny_llama_dir, tmp_path):
    """ppo.hardest_prompts works for the sampling stages as for PPO: only the chosen
    training prompts are sampled (here the longest raw prompts, as minus-length rates them)."""
    prompts = prompts_of_three_lengths(tmp_path)

    def minus_length(prompts, responses):
        return [-float(len(r)) - 0.01 * i for i, r in enumerate(responses)]  # no ties: every group has a pair

    config = rollout_dpo_config(tiny_llama_dir, prompts, tmp_path, steps=1) if stage == "rollout-dpo" else \
        ppo_config(tiny_llama_dir, prompts, tmp_path, steps=1, group_size=2)
    config.stage, config.batch_size, config.eval_data = stage, 2, None
    config.ppo.hardest_prompts, config.ppo.hardest_by = 4, "prompt"
    trainer_class = RolloutDPOTrainer if stage == "rollout-dpo" else RejectionSamplingTrainer
    trainer = trainer_class(config, reward=minus_length, progress=False)
    raw = {r["input"]: r["text"] for r in trainer.rows}
    scores = minus_length([], list(raw))
    longest = [list(raw)[i] for i in sorted(range(len(raw)), key=lambda i: scores[i])[:4]]
    trainer.train()
    chosen = json.loads((trainer.output_dir / "hardest_prompts.json").read_text())
    assert chosen["pool"] == 18 and chosen["texts"] == longest
    samples = trainer.output_dir / (trainer_class.PAIRS_FILE if stage == "rollout-dpo" else trainer_class.SAMPLES_FILE)
    assert {json.loads(x)["prompt"] for x in samples.read_text().splitlines()} == {raw[t] for t in longest}
    # a resume must train on the interrupted run's prompts, or say why it cannot
    config.ppo.hardest_prompts = 5
    with pytest.raises(TunelabError, match="chose 4 of 18 prompts by prompt; this run asks for 5 of 18"):
        trainer_class(config, reward=minus_length, progress=False).train(resume=True)
    config.ppo.hardest_prompts = -1
    with pytest.raises(TunelabError, match="hardest_prompts must be 0"):
        trainer_class(config, reward=minus_length, progress=False)
