import json

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.benchmarks import evaluate_task, forgetting_table


def test_accuracy_and_unknown_task(tiny_model):
    result = evaluate_task(tiny_model.model, tiny_model.tokenizer, "copa", limit=6)
    assert result["n"] == 6 and 0 <= result["accuracy"] <= 1
    with pytest.raises(TunelabError, match="unknown benchmark task 'mnli'; tasks: sst2, boolq, rte, cb, copa"):
        evaluate_task(tiny_model.model, tiny_model.tokenizer, "mnli")


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
