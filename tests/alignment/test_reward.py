"""Reward models and classifiers on a tiny Llama and T5: they learn a separable set, save
in Hugging Face formats, and score the same after reloading; rewards from functions."""

import csv
import json

import pytest
import torch

from tests.conftest import DATA_ROWS
from tunelab.alignment.reward import ClassifierTrainer, ModelScorer, RewardTrainer, evaluate_pairs, load_reward
from tunelab.cli import main
from tunelab.errors import DataError, TunelabError
from tunelab.recipe import TrainConfig


@pytest.fixture
def pairs_file(tmp_path):
    """Trivially separable: the chosen answer always names the park."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": r["dialogue"], "chosen": "Next to the park.", "rejected": "Take an umbrella then."} for r in DATA_ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def labelled_file(tmp_path):
    path = tmp_path / "labelled.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tweet", "class"])
        for i in range(16):
            writer.writerow(["Next to the park." if i % 2 else "Take an umbrella then.", 2 if i % 2 else 1])
    return path


def config_for(stage, model_dir, data, tmp_path, method="full", **fields):
    config = TrainConfig(stage=stage, method=method, model=str(model_dir), data=str(data), split=None, eval_data=str(data),
                         eval_split=None, max_steps=20, batch_size=4, learning_rate=1e-2 if method == "lora" else 2e-3,
                         warmup_ratio=0.0, max_length=64, output_dir=str(tmp_path / f"{stage}-{method}"), seed=0)
    for key, value in fields.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("method", ["full", "lora"])
def test_reward_model_separates_pairs_and_reloads(method, tiny_model_dir, pairs_file, tmp_path):
    trainer = RewardTrainer(config_for("reward", tiny_model_dir, pairs_file, tmp_path, method), progress=False)
    result = trainer.train()
    assert result.summary["eval_accuracy"] == 1.0
    assert result.summary["eval_margin"] > 1.0
    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["eval_loss"] < logged[0]["loss"]
    # the artifact: a Hugging Face folder (full) or a peft adapter with its head (LoRA)
    marker = "config.json" if method == "full" else "adapter_config.json"
    assert (result.artifact / marker).is_file() and (result.artifact / "tunelab_reward.json").is_file()
    scorer = ModelScorer(result.artifact)
    metrics = evaluate_pairs(scorer, str(pairs_file))
    assert metrics["accuracy"] == 1.0
    assert metrics["margin"] == pytest.approx(result.summary["eval_margin"], rel=1e-3)


def test_reward_model_cli(tiny_llama_dir, pairs_file, tmp_path, capsys):
    result = RewardTrainer(config_for("reward", tiny_llama_dir, pairs_file, tmp_path), progress=False).train()
    out = tmp_path / "metrics.json"
    assert main(["reward", "eval", "--model", str(result.artifact), "--data", str(pairs_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy 1.0000" in printed and "| |margin| | pairs | accuracy |" in printed
    written = json.loads(out.read_text())
    assert written["accuracy"] == 1.0 and sum(b["pairs"] for b in written["by_margin"]) == written["pairs"]
    texts = tmp_path / "texts.txt"
    texts.write_text("Next to the park.\nTake an umbrella then.\n")
    assert main(["reward", "score", "--model", str(result.artifact), "--texts", str(texts)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    good, bad = (float(line.split("\t")[0]) for line in lines)
    assert good > bad


@pytest.mark.parametrize("method", ["full", "lora"])
def test_classifier_learns_and_rewards_its_class(method, tiny_model_dir, labelled_file, tmp_path):
    config = config_for("classifier", tiny_model_dir, labelled_file, tmp_path, method)
    result = ClassifierTrainer(config, progress=False).train()
    assert result.summary["eval_accuracy"] == 1.0
    reward = load_reward(str(result.artifact), output="probability")  # default class: 'neither'
    scores = reward(["", ""], ["Next to the park.", "Take an umbrella then."])
    assert scores[0] > 0.5 > scores[1]
    log_scores = load_reward(str(result.artifact), output="log_probability")(["", ""], ["Next to the park.", "Take an umbrella then."])
    torch.testing.assert_close(log_scores, scores.log())
    offensive = load_reward(str(result.artifact), label="offensive")
    logits = offensive(["", ""], ["Next to the park.", "Take an umbrella then."])
    assert logits[1] > logits[0]
    check_calibration(result.artifact, labelled_file, tmp_path)


def check_calibration(artifact, labelled_file, tmp_path):
    """`tunelab reward calibrate` fits a temperature on rows after the skipped ones, saves it
    in the folder, and probabilities use it from then on (raw logits do not)."""
    texts = ["Next to the park.", "Take an umbrella then."]
    raw = ModelScorer(artifact, calibrated=False).logits(["", ""], texts)
    out = tmp_path / "calibration.json"
    assert main(["reward", "calibrate", "--model", str(artifact), "--data", str(labelled_file), "--skip", "8",
                 "--limit", "8", "--eval-data", str(labelled_file), "--eval-limit", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["validation_rows"], report["held_out_rows"]) == (8, 8) and report["temperature"] > 0
    assert report["after"]["accuracy"] == report["before"]["accuracy"]  # a temperature keeps every ranking
    assert report["after"]["nll"] <= report["before"]["nll"] + 1e-6
    assert {"ece_10", "ece_1", "brier"} <= set(report["after"]) and "f1_neither" in report["f1"]
    scorer = ModelScorer(artifact, output="probability")
    assert scorer.temperature == pytest.approx(report["temperature"])
    torch.testing.assert_close(scorer.logits(["", ""], texts), raw)
    torch.testing.assert_close(scorer(["", ""], texts), (raw / report["temperature"]).softmax(-1)[:, 2])


def test_calibrating_needs_classes_and_rows(tiny_llama_dir, pairs_file, labelled_file, tmp_path, capsys):
    result = RewardTrainer(config_for("reward", tiny_llama_dir, pairs_file, tmp_path, max_steps=1), progress=False).train()
    calibrate = ["reward", "calibrate", "--data", str(labelled_file), "--eval-data", str(labelled_file)]
    assert main(calibrate + ["--model", str(result.artifact)]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err
    classifier = ClassifierTrainer(config_for("classifier", tiny_llama_dir, labelled_file, tmp_path, max_steps=1),
                                   progress=False).train()
    assert main(calibrate + ["--model", str(classifier.artifact), "--skip", "16"]) == 2
    assert "no rows after skipping 16" in capsys.readouterr().err


def test_classifier_bad_input(tiny_llama_dir, labelled_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("tweet,class\nhello,2\nbye,toxic\n")
    with pytest.raises(DataError, match=r"bad.csv:3: label 'toxic' is not one of \['hate', 'offensive', 'neither'\]"):
        ClassifierTrainer(config_for("classifier", tiny_llama_dir, bad, tmp_path), progress=False)
    config = config_for("classifier", tiny_llama_dir, labelled_file, tmp_path)
    config.classifier.text_field = "text"
    with pytest.raises(DataError, match=r"labelled.csv:2: no field 'text' \(fields: tweet, class\)"):
        ClassifierTrainer(config, progress=False)
    config = config_for("classifier", tiny_llama_dir, labelled_file, tmp_path)
    config.classifier.reward_label = "nice"
    with pytest.raises(TunelabError, match="reward_label 'nice' is not one of"):
        ClassifierTrainer(config, progress=False)


def test_a_language_model_is_not_a_reward_model(tiny_llama_dir):
    with pytest.raises(TunelabError, match="is a language model, not a reward model"):
        ModelScorer(tiny_llama_dir)


def test_function_rewards():
    reward = load_reward("tests.alignment.rewards:count_target")
    assert reward(["a", "b"], ["the park, the park", "nothing"]).tolist() == [2.0, 0.0]
    with pytest.raises(TunelabError, match="reward function 'tests.alignment.rewards:nope' not found"):
        load_reward("tests.alignment.rewards:nope")
    broken = load_reward("tests.alignment.rewards:wrong_count")
    with pytest.raises(TunelabError, match="returned 1 values for 2 responses"):
        broken(["a", "b"], ["x", "y"])
    assert torch.is_tensor(reward(["a"], ["park"]))
