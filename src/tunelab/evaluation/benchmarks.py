"""Classification benchmarks scored by the log-likelihood of each answer option.

The model's answer is the option whose tokens have the highest total log-probability
after the context (the scenarios and the shared-context scorer of `tunelab evaluate`,
reduced to accuracy on five tasks). Zero-shot, or k-shot with solved examples from the
task's training file before the question. Used to make catastrophic forgetting visible:
score a model before and after fine-tuning on another task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.choice_metrics import argmax
from tunelab.evaluation.loglik import score_items
from tunelab.evaluation.scenarios import scenario

TASKS = ("sst2", "boolq", "rte", "cb", "copa")  # `tunelab evaluate` has these and more


def evaluate_task(model: Any, tokenizer: Any, name: str, *, limit: int | None = None, shots: int = 0,
                  seed: int = 0) -> dict[str, float]:
    """Accuracy on one task in tunelab's format: `tunelab evaluate` reduced to acc."""
    if name not in TASKS:
        raise TunelabError(f"unknown benchmark task '{name}'; tasks: {', '.join(TASKS)}")
    items = scenario(name).items("tunelab", limit=limit, shots=shots, seed=seed)
    scores, _ = score_items(model, tokenizer, items)
    correct = sum(argmax(s) in item.gold for item, s in zip(items, scores))
    return {"accuracy": correct / len(items), "n": len(items)}


def run_benchmarks(model: Any, tokenizer: Any, tasks: list[str], *, limit: int | None = None, shots: int = 0,
                   progress: bool = True) -> dict[str, dict[str, float]]:
    from tqdm.auto import tqdm

    for name in tasks:
        if name not in TASKS:
            raise TunelabError(f"unknown benchmark task '{name}'; tasks: {', '.join(TASKS)}")
    return {name: evaluate_task(model, tokenizer, name, limit=limit, shots=shots)
            for name in tqdm(tasks, desc="benchmarks", disable=not progress)}


def forgetting_table(runs: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: accuracy per task for each run, and the change from the first run."""
    names = list(runs)
    tasks = [t for t in runs[names[0]] if all(t in r for r in runs.values())]
    header = "| task | " + " | ".join(names) + " |"
    lines = [header, "|---|" + "---:|" * len(names)]
    for task in tasks + ["mean"]:
        values = [
            (sum(r[t]["accuracy"] for t in tasks) / len(tasks)) if task == "mean" else r[task]["accuracy"]
            for r in runs.values()
        ]
        cells = [f"{100 * values[0]:.1f}"] + [f"{100 * v:.1f} ({100 * (v - values[0]):+.1f})" for v in values[1:]]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    return json.loads(Path(path).read_text())
