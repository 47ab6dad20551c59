"""Run lm-evaluation-harness on the same local items `tunelab evaluate --format lm-eval`
scores, and compare the two item for item.

lm-eval's own task files are used (``include``), with only the data swapped for a local
copy of the shipped rows in the Hugging Face layout its templates read, so the prompt
formats compared are lm-eval's, not a transcription of them. Needs ``lm-eval`` (a
development dependency); imported only when called.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.evaluation.scenarios import scenario
from tunelab.files import write_text

# scenario -> lm-eval's task file, under lm_eval/tasks/
TASK_FILES = {
    "sst2": "glue/sst2/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "rte": "super_glue/rte/default.yaml",
    "cb": "super_glue/cb/default.yaml",
    "copa": "super_glue/copa/default.yaml",
    "wic": "super_glue/wic/default.yaml",
    "wsc": "super_glue/wsc/default.yaml",
    "truthfulqa_mc1": "truthfulqa/truthfulqa_mc1.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
}
LABELS = {"rte": {"entailment": 0, "not_entailment": 1}, "cb": {"entailment": 0, "contradiction": 1, "neutral": 2}}


def hf_doc(name: str, row: dict, index: int) -> dict:
    """A shipped row in the Hugging Face dataset's layout (super_glue, glue, truthful_qa)."""
    if name in LABELS:
        return {**row, "label": LABELS[name][row["label"]], "idx": index}
    if name == "wsc":  # FewGLUE nests the spans under "target"
        return {"text": row["text"], **row["target"], "label": int(bool(row["label"])), "idx": index}
    if name.startswith("truthfulqa"):
        return truthfulqa_doc(row, index)
    return {**row, "label": int(row["label"]), "idx": index}


def truthfulqa_doc(row: dict, index: int) -> dict:
    """The multiple_choice config's layout, its choices built as tunelab builds them."""
    def targets(name: str) -> dict:
        item = scenario(name).build(row, f"{name}:{index}", "lm-eval")
        return {"choices": [o[1:] for o in item.options], "labels": [int(k in item.gold) for k in range(len(item.options))]}
    return {"question": row["Question"].strip(), "mc1_targets": targets("truthfulqa_mc1"),
            "mc2_targets": targets("truthfulqa_mc2")}


def write_tasks(folder: Path, names: Sequence[str], limit: int | None = None) -> dict[str, str]:
    """For each scenario, ``<folder>/tunelab_<name>.yaml`` (lm-eval's task file with local
    data) and its JSONL; returns scenario -> lm-eval task name."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names_out = {}
    for name in names:
        rows = [row for _, row in scenario(name).rows()][:limit]
        data = folder / f"{name}.jsonl"
        write_text(data, "".join(json.dumps(hf_doc(name, row, i)) + "\n" for i, row in enumerate(rows)))
        task = f"tunelab_{name}"
        config = {"include": str(tasks_dir / TASK_FILES[name]), "task": task, "tag": [], "dataset_path": "json",
                  "dataset_name": None, "dataset_kwargs": {"data_files": {"validation": str(data)}},
                  "training_split": None, "validation_split": "validation", "test_split": None}
        write_text(folder / f"{task}.yaml", json.dumps(config, indent=1) + "\n")  # JSON is YAML
        names_out[name] = task
    return names_out


def run_lm_eval(model: str, tasks: dict[str, str], folder: Path, batch_size: int = 8) -> tuple[dict[str, dict[str, Any]], float]:
    """lm-eval's Hugging Face backend on the tasks: per scenario its accuracy and each
    item's option log-likelihoods (in file order); and the seconds its model spent in
    log-likelihood scoring (task loading and set-up not counted, as for tunelab)."""
    import time

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, batch_size=batch_size, device="cpu", dtype="float32")
    spent = [0.0]
    scoring = lm.loglikelihood

    def timed(requests, *args, **kwargs):
        started = time.perf_counter()
        try:
            return scoring(requests, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    lm.loglikelihood = timed
    output = simple_evaluate(model=lm, tasks=list(tasks.values()), task_manager=TaskManager(include_path=str(folder)),
                             log_samples=True, num_fewshot=0)
    results = {}
    for name, task in tasks.items():
        samples = sorted(output["samples"][task], key=lambda s: s["doc_id"])
        results[name] = {"acc": output["results"][task]["acc,none"],
                         "logprobs": [[float(r[0]) for r in s["filtered_resps"]] for s in samples]}
    return results, spent[0]


def agreement(ours: Sequence[dict], theirs: dict[str, Any]) -> dict[str, float]:
    """Item-for-item agreement of predictions (the argmax of the option log-likelihoods),
    and both accuracies. ``ours``: items.jsonl rows of one model and scenario, in order."""
    import numpy as np

    ours_pred = [int(np.argmax(r["logprobs"])) for r in ours]
    theirs_pred = [int(np.argmax(lp)) for lp in theirs["logprobs"]]
    if len(ours_pred) != len(theirs_pred):
        raise ValueError(f"{len(ours_pred)} items against lm-eval's {len(theirs_pred)}")
    same = sum(a == b for a, b in zip(ours_pred, theirs_pred))
    gaps = [abs(a - b) for r, lp in zip(ours, theirs["logprobs"]) for a, b in zip(r["logprobs"], lp)]
    return {"n": len(ours_pred), "same_prediction": same / len(ours_pred), "max_logprob_gap": max(gaps, default=0.0),
            "lm_eval_acc": theirs["acc"]}
