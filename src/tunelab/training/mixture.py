"""Multitask instruction data, FLAN-style: several datasets, each with its own
instruction template, mixed with sampling weights.

A recipe's ``mixture`` lists entries such as::

    - data: sst2
      split: train
      template: "Review: {sentence}\\nIs this review positive or negative?"
      target: "{label}"
      labels: {0: negative, 1: positive}
      limit: 500
      weight: 1.0

``template`` and ``target`` are Python format strings over the row's fields; ``labels``
maps a field's raw value to words. ``weight`` scales how many of the entry's rows are
used per epoch: 2.0 repeats each twice, 0.5 samples half of them (seeded).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data import BUILTIN_DATASETS, Example, iter_records
from tunelab.data.loading import builtin_path
from tunelab.errors import DataError


@dataclass
class MixtureEntry:
    data: str = field(metadata={"help": "Built-in dataset or data file."})
    template: str = field(metadata={"help": "Format string over the row's fields: the instruction and input."})
    target: str = field(metadata={"help": "Format string over the row's fields: the answer."})
    split: str | None = field(default=None, metadata={"help": "Split of a built-in dataset."})
    labels: dict[str, str] = field(default_factory=dict, metadata={"help": "Raw value -> answer word, applied to every field."})
    weight: float = field(default=1.0, metadata={"help": "Rows used per epoch = weight x rows (sampled when < 1)."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many rows (after skip)."})
    skip: int = field(default=0, metadata={"help": "Skip the first N rows (e.g. those a benchmark scores)."})


def parse_entries(raw: list[Any]) -> list[MixtureEntry]:
    names = [f.name for f in dataclasses.fields(MixtureEntry)]
    entries = []
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise DataError(f"mixture entry {index}: expected a mapping, got {item!r:.60}")
        unknown = [k for k in item if k not in names]
        missing = [k for k in ("data", "template", "target") if k not in item]
        if unknown or missing:
            raise DataError(f"mixture entry {index}: unknown keys {unknown} / missing keys {missing}; keys: {', '.join(names)}")
        entry = MixtureEntry(**item)
        entry.labels = {str(k): str(v) for k, v in (entry.labels or {}).items()}
        if entry.weight <= 0:
            raise DataError(f"mixture entry {index}: weight must be > 0")
        entries.append(entry)
    return entries


def _records(entry: MixtureEntry) -> list[tuple[str, dict[str, Any]]]:
    if entry.data.lower() in BUILTIN_DATASETS:
        path = builtin_path(entry.data.lower(), entry.split or BUILTIN_DATASETS[entry.data.lower()].pool_split)
    else:
        path = Path(entry.data)
        if not path.is_file():
            raise DataError(f"no such data file: {path}")
    records = list(iter_records(path))[entry.skip :]
    return records[: entry.limit] if entry.limit else records


def _format(text: str, row: dict[str, Any], labels: dict[str, str], where: str) -> str:
    values = {k: labels.get(str(v), v) for k, v in row.items()}
    try:
        return text.format(**values)
    except KeyError as exc:
        raise DataError(f"{where}: template field {exc} not in the row's fields {list(row)}") from None


def load_mixture(entries: list[MixtureEntry], seed: int) -> list[Example]:
    """All entries' rows as Examples, each entry resampled by its weight."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for number, entry in enumerate(entries, start=1):
        rows = [
            Example(f"{entry.data}-{i}", _format(entry.template, row, entry.labels, where), (_format(entry.target, row, entry.labels, where),))
            for i, (where, row) in enumerate(_records(entry))
        ]
        if not rows:
            raise DataError(f"mixture entry {number} ({entry.data}): no rows")
        whole, fraction = divmod(entry.weight, 1.0)
        chosen = rows * int(whole) + rng.sample(rows, round(fraction * len(rows)))
        examples.extend(chosen)
    rng.shuffle(examples)
    return examples
