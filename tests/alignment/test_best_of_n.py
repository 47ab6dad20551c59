"""Best-of-n: the selection rule, `tunelab prompt --best-of N --reward`, and rejection-
sampling fine-tuning (stage rejection-sampling) on a tiny Llama and T5."""

import json

import pytest
import torch

from tests.alignment.test_ppo import count_reward, metrics, ppo_config, toy
from tunelab.alignment.best_of_n import RejectionSamplingTrainer, choose, pick_best
from tunelab.errors import PromptError
from tunelab.generation import GenerationSettings
from tunelab.jobs import PromptJob, run_prompt
from tunelab.models import load_model


def test_pick_best_is_the_argmax_of_each_group():
    assert pick_best([0.1, 0.9, 0.5, 3.0, -1.0, 2.0], 3) == [1, 0]
    assert pick_best([1.0, 1.0, 0.0, 2.0], 2) == [0, 1]  # a tie goes to the earlier sample
    assert pick_best([0.3, 0.2], 1) == [0, 0]
    with pytest.raises(ValueError, match="groups of 4"):
        pick_best([1.0, 2.0, 3.0], 4)


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


def test_a_resumed_rejection_sampling_run_reuses_its_samples(tiny_llama_dir, dialog_file, tmp_path, monkeypatch):
    target, _ = toy(tiny_llama_dir)
    config = ppo_config(tiny_llama_dir, dialog_file, tmp_path, steps=4, group_size=2)
    config.stage, config.batch_size, config.save_steps = "rejection-sampling", 2, 2
    straight = RejectionSamplingTrainer(config, reward=count_reward(target), progress=False)
    straight.train()
    expected = {k: v.clone() for k, v in straight._trainable().items()}
    (straight.output_dir / "checkpoints" / "latest").write_text("step-2")
    again = RejectionSamplingTrainer(config, reward=count_reward(target), progress=False)
    monkeypatch.setattr(again, "sample", lambda: pytest.fail("a resumed run must not sample again"))
    again.train(resume=True)
    for name, value in again._trainable().items():
        assert torch.equal(value, expected[name]), name
