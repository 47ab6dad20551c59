"""Classification benchmarks scored by the log-likelihood of each answer option.

Each task turns a row into a context and its answer options (lm-eval-harness style);
the model's answer is the option whose tokens have the highest total log-probability
after the context. Zero-shot, or k-shot with solved examples from the task's training
file before the question. Used to make catastrophic forgetting visible: score a model
before and after fine-tuning on another task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data import BUILTIN_DATASETS, iter_records
from tunelab.data.loading import builtin_path
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Choice:
    context: str
    options: tuple[str, ...]
    gold: int


def _sst2(row: dict) -> Choice:
    return Choice(f"Review: {row['sentence'].strip()}\nSentiment:", (" negative", " positive"), int(row["label"]))


def _boolq(row: dict) -> Choice:
    return Choice(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", (" no", " yes"), int(bool(row["label"])))


def _rte(row: dict) -> Choice:
    context = f"{row['premise']}\nQuestion: {row['hypothesis']} True or False?\nAnswer:"
    return Choice(context, (" True", " False"), 0 if row["label"] == "entailment" else 1)


def _cb(row: dict) -> Choice:
    context = f"{row['premise']}\nQuestion: {row['hypothesis']} True, False, or Neither?\nAnswer:"
    return Choice(context, (" True", " False", " Neither"), {"entailment": 0, "contradiction": 1, "neutral": 2}[row["label"]])


def _copa(row: dict) -> Choice:
    connector = " because" if row["question"] == "cause" else " therefore"
    lower = lambda text: " " + text[0].lower() + text[1:]  # noqa: E731
    return Choice(row["premise"].rstrip(".") + connector, (lower(row["choice1"]), lower(row["choice2"])), int(row["label"]))


@dataclass(frozen=True)
class Task:
    name: str  # a built-in dataset: scored on its default split, shots from its pool split
    to_choice: Callable[[dict], Choice]


TASKS: dict[str, Task] = {t.name: t for t in (Task("sst2", _sst2), Task("boolq", _boolq), Task("rte", _rte), Task("cb", _cb), Task("copa", _copa))}


def task_choices(name: str, limit: int | None = None, shots: int = 0, seed: int = 0) -> list[Choice]:
    """The task's evaluation rows as Choices, each context preceded by ``shots`` solved
    training examples (one seeded draw shared by all rows)."""
    if name not in TASKS:
        raise TunelabError(f"unknown benchmark task '{name}'; tasks: {', '.join(TASKS)}")
    task, dataset = TASKS[name], BUILTIN_DATASETS[name]
    rows = [task.to_choice(r) for _, r in iter_records(builtin_path(name, dataset.default_split))]
    rows = rows[:limit] if limit else rows
    if not shots:
        return rows
    pool = [task.to_choice(r) for _, r in iter_records(builtin_path(name, dataset.pool_split))]
    examples = random.Random(seed).sample(pool, shots)
    prefix = "".join(f"{c.context}{c.options[c.gold]}\n\n" for c in examples)
    return [Choice(prefix + c.context, c.options, c.gold) for c in rows]


def option_logprobs(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Total log-probability of each option's tokens after its context."""
    import torch

    scores: list[float] = []
    encoder_decoder = model.config.is_encoder_decoder
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            contexts = [tokenizer(c)["input_ids"] for c, _ in chunk]
            options = [tokenizer(o, add_special_tokens=False)["input_ids"] for _, o in chunk]
            if encoder_decoder:
                scores.extend(_seq2seq_scores(model, contexts, options, pad, device))
            else:
                scores.extend(_causal_scores(model, contexts, options, pad, device))
    return scores


def _causal_scores(model, contexts, options, pad, device) -> list[float]:
    import torch

    sequences = [c + o for c, o in zip(contexts, options)]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):  # left padding: every option ends at the right edge
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    keep = max(map(len, options)) + 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), logits_to_keep=keep).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = ids[:, width - keep + 1 :].to(device)
    picked = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    return [float(picked[row, keep - 1 - len(option) :].sum()) for row, option in enumerate(options)]


def _seq2seq_scores(model, contexts, options, pad, device) -> list[float]:
    import torch

    width, out_width = max(map(len, contexts)), max(map(len, options))
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(options), out_width), -100, dtype=torch.long)
    for row, (context, option) in enumerate(zip(contexts, options)):
        ids[row, : len(context)] = torch.tensor(context)
        mask[row, : len(context)] = 1
        labels[row, : len(option)] = torch.tensor(option)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, labels.clamp(min=0).to(device)[..., None]).squeeze(-1)
    return [float(picked[row, : len(option)].sum()) for row, option in enumerate(options)]


def evaluate_task(model: Any, tokenizer: Any, name: str, *, limit: int | None = None, shots: int = 0, seed: int = 0) -> dict[str, float]:
    choices = task_choices(name, limit, shots, seed)
    pairs = [(c.context, option) for c in choices for option in c.options]
    scores = iter(option_logprobs(model, tokenizer, pairs))
    correct = 0
    for choice in choices:
        option_scores = [next(scores) for _ in choice.options]
        correct += int(max(range(len(option_scores)), key=option_scores.__getitem__) == choice.gold)
    return {"accuracy": correct / len(choices), "n": len(choices)}


def run_benchmarks(model: Any, tokenizer: Any, tasks: list[str], *, limit: int | None = None, shots: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    from tqdm.auto import tqdm

    for name in tasks:
        if name not in TASKS:
            raise TunelabError(f"unknown benchmark task '{name}'; tasks: {', '.join(TASKS)}")
    return {name: evaluate_task(model, tokenizer, name, limit=limit, shots=shots) for name in tqdm(tasks, desc="benchmarks", disable=not progress)}


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
