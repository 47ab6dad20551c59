"""`tunelab evaluate --format lm-eval` agrees with lm-evaluation-harness item for item, on
the real default model: lm-eval's own task files, the same local rows, the same model
folder. Slow: the default model, both tools."""

import json

import pytest

from tunelab.evaluation.holistic import ModelSpec, evaluate_models
from tunelab.evaluation.lm_eval_check import TASK_FILES, agreement, run_lm_eval, write_tasks
from tunelab.evaluation.settings import EvalSettings
from tunelab.models import load_for_inference

pytestmark = pytest.mark.slow
LIMIT = 24  # items per task: 216 in all, a few minutes for both tools on 2 cores


def test_predictions_and_accuracies_agree_with_lm_eval(tmp_path, default_model, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    names = tuple(TASK_FILES)
    settings = EvalSettings(scenarios=names, format="lm-eval", limit=LIMIT, perturb=False, mutual_info=False,
                            bootstrap=0)
    folder = default_model.model.name_or_path  # the converted folder in the user cache
    evaluate_models([ModelSpec("m", folder)], settings, tmp_path / "ours",
                    lambda spec: load_for_inference(spec.model, device="cpu"), progress=False)
    ours = [json.loads(line) for line in (tmp_path / "ours" / "items.jsonl").read_text().splitlines()]
    results = json.loads((tmp_path / "ours" / "results.json").read_text())["models"]["m"]
    theirs, _ = run_lm_eval(folder, write_tasks(tmp_path / "tasks", names, LIMIT), tmp_path / "tasks")
    same = total = 0
    for name in names:
        check = agreement([r for r in ours if r["scenario"] == name], theirs[name])
        same, total = same + check["same_prediction"] * check["n"], total + check["n"]
        assert abs(results[name]["acc"] - check["lm_eval_acc"]) <= 0.005, (name, results[name]["acc"], check)
        assert check["max_logprob_gap"] < 1e-3, (name, check)
    assert same / total >= 0.995
