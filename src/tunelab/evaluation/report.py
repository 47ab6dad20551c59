"""Score prediction files and compare them side by side (Markdown and JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunelab.data import iter_records
from tunelab.errors import DataError
from tunelab.evaluation.metrics import score

COLUMNS = (
    ("n", "n", "{:d}"),
    ("rouge1", "ROUGE-1", "{:.2f}"),
    ("rouge2", "ROUGE-2", "{:.2f}"),
    ("rougeL", "ROUGE-L", "{:.2f}"),
    ("rougeLsum", "ROUGE-Lsum", "{:.2f}"),
    ("bleu", "BLEU", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
)


def read_predictions(path: Path) -> tuple[list[str], list[list[str]]]:
    """Predictions and references from a ``tunelab prompt`` output (or any file whose
    rows have ``prediction`` and ``references``); bad rows name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such predictions file: {path}")
    predictions, references = [], []
    for where, row in iter_records(path):
        prediction = row.get("prediction")
        if not isinstance(prediction, str):
            raise DataError(f"{where}: expected a string field 'prediction'; the row has fields {list(row)}")
        refs = row.get("references")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise DataError(f"{where}: expected 'references' as a non-empty list of non-empty strings, got {refs!r:.80}")
        predictions.append(prediction)
        references.append(refs)
    if not predictions:
        raise DataError(f"{path}: no rows")
    return predictions, references


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Short, unique row labels: file stems, or paths where stems collide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else str(p) for stem, p in zip(stems, paths)]


def score_files(paths: Sequence[Path], multi_ref: str = "mean") -> dict[str, dict[str, float]]:
    results = {}
    for label, path in zip(labels_for(paths), paths):
        predictions, references = read_predictions(Path(path))
        results[label] = score(predictions, references, multi_ref)
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """ROUGE shown as percentages (x100) to read like papers; the JSON keeps fractions."""
    header = "| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for label, metrics in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = metrics[key]
            if key.startswith("rouge"):
                value *= 100
            cells.append(fmt.format(int(value) if key == "n" else value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
