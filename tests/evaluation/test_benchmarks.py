import json

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluation.benchmarks import TASKS, evaluate_task, forgetting_table, option_logprobs, task_choices


def test_every_task_loads_with_valid_gold_answers():
    sizes = {"sst2": 872, "boolq": 3270, "rte": 277, "cb": 56, "copa": 100}
    for name in TASKS:
        choices = task_choices(name)
        assert len(choices) == sizes[name]
        assert all(0 <= c.gold < len(c.options) for c in choices)
    copa = task_choices("copa", limit=1)[0]
    assert copa.context == "The man turned on the faucet therefore"
    assert copa.options == (" the toilet filled with water.", " water flowed from the spout.") and copa.gold == 1
    rte = task_choices("rte", limit=1)[0]
    assert rte.context.endswith("Christopher Reeve had an accident. True or False?\nAnswer:") and rte.gold == 1


def test_few_shot_prefix_is_shared_and_solved():
    zero, two = task_choices("sst2", limit=3), task_choices("sst2", limit=3, shots=2, seed=1)
    prefix = two[0].context[: -len(zero[0].context)]
    assert prefix.count("Sentiment:") == 2 and all(c.context == prefix + z.context for c, z in zip(two, zero))
    assert prefix.rstrip().endswith(("negative", "positive"))


def test_option_logprobs_equal_a_plain_forward(tiny_model):
    """Batched, left-padded, completion-only scoring = the sum of log-probs from one
    full forward per (context, option) pair."""
    tokenizer, model = tiny_model.tokenizer, tiny_model.model
    pairs = [("Review: great movie\nSentiment:", " positive"), ("Summary:", " They greet each other."), ("Where is the bank?", " no")]
    batched = option_logprobs(model, tokenizer, pairs, batch_size=3)
    for (context, option), score in zip(pairs, batched):
        c = tokenizer(context)["input_ids"]
        o = tokenizer(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            if tiny_model.is_encoder_decoder:
                logits = model(input_ids=torch.tensor([c]), labels=torch.tensor([o])).logits[0]
                expected = sum(torch.log_softmax(logits[i], -1)[t] for i, t in enumerate(o))
            else:
                logits = model(input_ids=torch.tensor([c + o])).logits[0]
                expected = sum(torch.log_softmax(logits[len(c) - 1 + i], -1)[t] for i, t in enumerate(o))
        assert score == pytest.approx(float(expected), abs=1e-4)


def test_accuracy_and_unknown_task(tiny_model):
    result = evaluate_task(tiny_model.model, tiny_model.tokenizer, "copa", limit=6)
    assert result["n"] == 6 and 0 <= result["accuracy"] <= 1
    with pytest.raises(TunelabError, match="unknown benchmark task 'mnli'; tasks: sst2, boolq, rte, cb, copa"):
        task_choices("mnli")


def test_forgetting_table_and_cli(tmp_path, tiny_llama_dir, capsys):
    from tunelab.cli import main

    before = {"sst2": {"accuracy": 0.8, "n": 10}, "copa": {"accuracy": 0.6, "n": 10}}
    after = {"sst2": {"accuracy": 0.7, "n": 10}, "copa": {"accuracy": 0.65, "n": 10}}
    table = forgetting_table({"base": before, "lora": after})
    assert "| sst2 | 80.0 | 70.0 (-10.0) |" in table and "| mean | 70.0 | 67.5 (-2.5) |" in table
    out = tmp_path / "scores.json"
    assert main(["benchmark", "--model", str(tiny_llama_dir), "--tasks", "copa,cb", "--limit", "4", "--out", str(out), "--no-progress"]) == 0
    assert set(json.loads(out.read_text())) == {"copa", "cb"}
    assert main(["forgetting", str(out), str(out)]) == 0
    assert "| copa |" in capsys.readouterr().out
