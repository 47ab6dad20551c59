"""The engine: exact resume after a crash, bad loss, bad input, the CLI, accelerate, mixtures."""

import json

import pytest
import torch

from tests.training.test_methods import make_config
from tunelab.data import load_examples
from tunelab.errors import DataError, MethodError, ModelError
from tunelab.models import load_model
from tunelab.training.engine import Trainer, TrainingError


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kill_and_resume_gives_the_same_weights(method, tiny_model_dir, dialog_file, tmp_path, monkeypatch):
    straight = Trainer(make_config(tiny_model_dir, dialog_file, tmp_path / "a", method, max_steps=6, save_steps=2), load_model(str(tiny_model_dir), device="cpu"), progress=False)
    straight.train()
    expected = trainable(straight)

    config = make_config(tiny_model_dir, dialog_file, tmp_path / "b", method, max_steps=6, save_steps=2)
    original = Trainer._after_step

    def crash_after_step_4(self, state, loss, bar):
        original(self, state, loss, bar)
        if state["step"] == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_after_step", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, load_model(str(tiny_model_dir), device="cpu"), progress=False).train()
    monkeypatch.setattr(Trainer, "_after_step", original)
    assert (tmp_path / "b" / f"run-{method}" / "checkpoints" / "latest").read_text() == "step-4"
    resumed = Trainer(config, load_model(str(tiny_model_dir), device="cpu"), progress=False)
    result = resumed.train(resume=True)
    assert result.steps == 6
    for name, value in trainable(resumed).items():
        assert torch.equal(value, expected[name]), f"{name} differs after resume"


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_llama_dir, dialog_file, tmp_path, monkeypatch):
    config = make_config(tiny_llama_dir, dialog_file, tmp_path, "lora", max_steps=6, save_steps=2)
    trainer = Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.logits = out.logits * float("nan")
            out.loss = None if out.loss is None else out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*last good checkpoint is .*step-2"):
        trainer.train()
    assert (tmp_path / "run-lora" / "checkpoints" / "step-2" / "trainable.safetensors").is_file()


def test_bad_input(tiny_llama_dir, tiny_t5_dir, dialog_file, tmp_path):
    config = make_config(tiny_llama_dir, dialog_file, tmp_path, "lora")
    config.lora.target_modules = ["query", "value"]
    with pytest.raises(MethodError, match=r"target modules \['query', 'value'\] match no module.*q_proj"):
        Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    config = make_config(tiny_t5_dir, dialog_file, tmp_path, "lora")
    config.lora.quantize_4bit = True
    if not torch.cuda.is_available():
        with pytest.raises(MethodError, match="QLoRA .* needs the base loaded in 4-bit: a CUDA GPU"):
            Trainer(config, load_model(str(tiny_t5_dir), device="cpu"), progress=False)
        # the trainer loads the base itself: the loader says what is missing
        with pytest.raises(ModelError, match="4-bit loading \\(QLoRA\\) needs a CUDA GPU .* on CPU use plain LoRA"):
            Trainer(config, progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        Trainer(make_config(tiny_llama_dir, empty, tmp_path, "lora"), load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text('{"text": "hello"}\n')
    with pytest.raises(DataError, match="no reference: training needs a target text"):
        Trainer(make_config(tiny_llama_dir, unlabeled, tmp_path, "lora"), load_model(str(tiny_llama_dir), device="cpu"), progress=False)


def test_adapter_on_an_architecture_without_placement(dialog_file, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import train_tokenizer
    from tunelab.models.loading import LoadedModel

    tokenizer = train_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    config = make_config("gpt2-tiny", dialog_file, tmp_path, "adapter")
    with pytest.raises(MethodError, match="no default adapter placement for model type 'gpt2'"):
        Trainer(config, LoadedModel(model, tokenizer, "gpt2-tiny"), progress=False)


def test_cli_train_then_prompt_with_adapter(tiny_llama_dir, dialog_file, tmp_path):
    from tunelab.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: lora\nmodel: {tiny_llama_dir}\ndata: {dialog_file}\nsplit: null\nmax_steps: 2\nbatch_size: 2\nchat_template: 'off'\n")
    out = tmp_path / "run"
    assert main(["train", str(recipe), "learning_rate=0.01", "--output-dir", str(out), "--no-progress"]) == 0
    assert (out / "final" / "adapter_config.json").is_file() and (out / "final" / "adapter_model.safetensors").is_file()
    preds = tmp_path / "p.jsonl"
    assert main(["prompt", "--model", str(tiny_llama_dir), "--adapter", str(out / "final"), "--data", str(dialog_file),
                 "--chat-template", "off", "--max-new-tokens", "3", "--out", str(preds), "--no-progress"]) == 0
    assert len(preds.read_text().splitlines()) == 6
    merged = tmp_path / "merged"
    assert main(["merge", "--model", str(tiny_llama_dir), "--adapter", str(out / "final"), "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file()


def test_two_process_cpu_run_under_accelerate_launch(tiny_llama_dir, dialog_file, tmp_path):
    """DDP over gloo on the CPU: both processes train on their share, one saves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    recipe = tmp_path / "r.yaml"
    # max_seconds: the processes agree on one clock each step (a collective), well within budget
    recipe.write_text(f"method: lora\nmodel: {tiny_llama_dir}\ndata: {dialog_file}\nsplit: null\nmax_steps: 2\nbatch_size: 1\nlearning_rate: 0.01\nchat_template: 'off'\nmax_seconds: 1000\n")
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "tunelab", "train", str(recipe), "--output-dir", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "final" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # logged once, by the main process
    assert done.stdout.count("lora: 2 steps") == 1  # one summary: only the main process saves


def test_multitask_mixture(tiny_llama_dir, tmp_path):
    from tunelab.training.mixture import load_mixture, parse_entries

    entries = parse_entries([
        {"data": "sst2", "split": "train", "template": "Review: {sentence}\nPositive or negative?", "target": "{label}",
         "labels": {0: "negative", 1: "positive"}, "limit": 10, "weight": 2.0},
        {"data": "boolq", "split": "val", "skip": 1000, "limit": 10, "weight": 0.5,
         "template": "{passage}\nQuestion: {question}?", "target": "{label}", "labels": {True: "yes", False: "no"}},
    ])
    examples = load_mixture(entries, seed=0)
    assert len(examples) == 2 * 10 + 5
    assert {e.references[0] for e in examples} <= {"negative", "positive", "yes", "no"}
    assert sum(e.input.startswith("Review: ") for e in examples) == 20
    with pytest.raises(DataError, match=r"unknown keys \['wieght'\]"):
        parse_entries([{"data": "sst2", "template": "{sentence}", "target": "{label}", "wieght": 1}])
    with pytest.raises(DataError, match="template field 'text' not in the row's fields"):
        load_mixture(parse_entries([{"data": "sst2", "template": "{text}", "target": "{label}", "limit": 2}]), 0)
    config = make_config(tiny_llama_dir, tmp_path / "unused.jsonl", tmp_path, "lora", max_steps=2)
    config.mixture = [{"data": "sst2", "split": "train", "template": "Review: {sentence}", "target": "{label}",
                       "labels": {0: "negative", 1: "positive"}, "limit": 6}]
    config.max_length = 128
    trainer = Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    assert len(trainer.rows) == 6
    trainer.train()


def test_a_time_budget_stops_training_and_eval_seconds_evaluates_along_the_way(tiny_llama_dir, dialog_file, tmp_path, capsys):
    # a budget of ~0 s: the first step passes it, so the run stops there and still saves
    config = make_config(tiny_llama_dir, dialog_file, tmp_path / "budget", "lora", max_steps=6, max_seconds=1e-9)
    config.eval_data, config.eval_split, config.eval_limit = str(dialog_file), None, 2
    result = Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False).train()
    assert result.steps == 1 and (result.artifact / "adapter_config.json").is_file()
    assert "passed max_seconds=1e-09" in capsys.readouterr().err
    # a stage's set-up (e.g. sampling) that alone uses the budget up still gets one step
    config = make_config(tiny_llama_dir, dialog_file, tmp_path / "setup", "lora", max_steps=6, max_seconds=1.0)
    trainer = Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    trainer.setup_seconds = 5.0
    assert trainer.train().steps == 1 and (trainer.output_dir / "metrics.jsonl").is_file()
    # eval_seconds of ~0: an evaluation after every step but the last (the final one is the end's)
    config = make_config(tiny_llama_dir, dialog_file, tmp_path / "curve", "lora", max_steps=3, eval_seconds=1e-9)
    config.eval_data, config.eval_split, config.eval_limit = str(dialog_file), None, 2
    trainer = Trainer(config, load_model(str(tiny_llama_dir), device="cpu"), progress=False)
    trainer.train()
    records = [json.loads(x) for x in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [1, 2, 3]
    assert all(r["elapsed"] > 0 for r in evaluations[:2])
    steps = [r for r in records if "loss" in r]
    # the clock runs on across steps (a tiny model's step can take under a millisecond, so equal is allowed)
    assert all(a["elapsed"] <= b["elapsed"] for a, b in zip(steps, steps[1:])) and steps[-1]["elapsed"] > steps[0]["elapsed"]
