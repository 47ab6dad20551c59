"""Read examples from JSONL, CSV/TSV and Parquet files or from the built-in datasets.

Every example becomes an :class:`Example` — an id, the input text and zero or more
reference outputs — whatever the file called its fields. A bad row stops the load with
the file, the line and what was expected, so nothing is silently skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunelab.errors import DataError


@dataclass(frozen=True)
class Example:
    """One input with its reference outputs (several for DialogSum's test split)."""

    id: str
    input: str
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset shipped inside the package, with its attribution beside the files."""

    splits: dict[str, str]  # split name -> file path inside data/builtin/
    default_split: str
    pool_split: str  # where few-shot examples come from by default
    description: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "dialogsum": BuiltinDataset(
        splits={"dev": "dialogsum/dev.jsonl", "test": "dialogsum/test.jsonl"},
        default_split="test",
        pool_split="dev",
        description="DialogSum dialogue summarization (Chen et al., 2021; CC BY-NC-SA 4.0): "
        "dev 500 rows with one summary, test 400 rows with three",
    ),
    "sst2": BuiltinDataset(
        splits={"train": "sst2/train.tsv", "test": "sst2/test.tsv"}, default_split="test", pool_split="train",
        description="SST-2 sentiment (sentence, label 0/1): train 6,735 rows (a GLUE train slice), test 872 (GLUE dev)",
    ),
    "sst2-prefixes": BuiltinDataset(
        splits={"train": "sst2/prefixes.train.jsonl", "test": "sst2/prefixes.test.jsonl"}, default_split="test",
        pool_split="train",
        description="The first 4-8 words of SST-2 sentences of 10+ words (prompts for sentiment control; "
        "scripts/make_sst2_prefixes.py): train 2,543, test 749, none shared",
    ),
    **{
        name: BuiltinDataset(
            splits={"train": f"superglue/{name}.train.jsonl", "val": f"superglue/{name}.val.jsonl"},
            default_split="val", pool_split="train",
            description=f"SuperGLUE {name.upper()}: train 32 rows (FewGLUE), val = the SuperGLUE validation split",
        )
        for name in ("boolq", "rte", "cb", "copa", "wic", "wsc")
    },
    "truthfulqa": BuiltinDataset(
        splits={"test": "truthfulqa/TruthfulQA.csv"}, default_split="test", pool_split="test",
        description="TruthfulQA (Lin et al., 2022; Apache 2.0): 817 questions with best, correct and incorrect "
        "answers (honesty; one split: evaluation only)",
    ),
    "bbq": BuiltinDataset(
        splits={"test": "bbq/test.jsonl"}, default_split="test", pool_split="test",
        description="BBQ bias benchmark (Parrish et al., 2022; CC BY 4.0): 1,200 items, six categories, ambiguous "
        "and disambiguated contexts (evaluation only)",
    ),
    "hh-rlhf": BuiltinDataset(
        splits={"train": "hh_rlhf/train.jsonl.gz", "test": "hh_rlhf/test.jsonl.gz"}, default_split="test", pool_split="train",
        description="Anthropic hh-rlhf harmless-base preference pairs (chosen, rejected transcripts; MIT): train 1,594, test 318",
    ),
    "hh-rlhf-prompts": BuiltinDataset(
        splits={"train": "hh_rlhf/prompts.train.jsonl", "test": "hh_rlhf/prompts.test.jsonl"}, default_split="test",
        pool_split="train",
        description="The first human turn of the hh-rlhf harmless-base pairs (red-teaming requests, prompts for "
        "detoxification; scripts/make_redteam_prompts.py): train 1,505, test 315, none shared",
    ),
    "gsm8k": BuiltinDataset(
        splits={"train": "gsm8k/train.jsonl.gz", "dev": "gsm8k/dev.jsonl", "test": "gsm8k/test.jsonl"},
        default_split="test", pool_split="train",
        description="GSM8K grade-school math (Cobbe et al., 2021; MIT): question, answer with calculator "
        "annotations and '#### number'; train 6,973, dev 500 (the upstream train split's last), test 1,119",
    ),
    "davidson": BuiltinDataset(
        splits={"train": "davidson/train.csv", "test": "davidson/test.csv"}, default_split="test", pool_split="train",
        description="Davidson et al. tweets, class 0 hate / 1 offensive / 2 neither (MIT): train 20,505, test 2,278",
    ),
}

# Field names tried, in order, when the user gives no mapping. DialogSum's own shape
# (dialogue + summary, or summary1..summary3) comes first.
INPUT_FIELD_NAMES = ("dialogue", "input", "prompt", "text", "question", "source", "sentence")
TARGET_FIELD_NAMES = ("summary", "references", "target", "output", "completion", "answer", "label")


def builtin_path(name: str, split: str | None) -> Path:
    dataset = BUILTIN_DATASETS[name]
    split = split or dataset.default_split
    if split not in dataset.splits:
        raise DataError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(dataset.splits)}")
    return Path(str(resources.files("tunelab.data") / "builtin" / dataset.splits[split]))


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, record) from a JSONL, JSON-array, CSV, TSV or Parquet file, where
    ``where`` is ``file:line`` (text files) or ``file: row N`` (Parquet, JSON arrays)."""
    try:
        yield from _iter_records(Path(path))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix == ".json" and _first_char(path) != "["):
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json_array(path)
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use .jsonl, .json, .csv, .tsv or .parquet")


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _first_char(path: Path) -> str:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.lstrip()[0]
    return ""


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                hint = " (one JSON object per line is expected)" if line_no == 1 and line.strip() == "{" else ""
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}){hint}") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}")
            yield f"{path}:{line_no}", record


def _iter_json_array(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(path) as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for row_no, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: row {row_no}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}: row {row_no}", record


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        start = 2  # the first line of the next record (a quoted cell may span lines)
        try:
            for record in reader:
                if None in record:  # more cells than header columns
                    raise DataError(f"{path}:{start}: more columns than the header's {len(reader.fieldnames)}")
                yield f"{path}:{start}", record
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: bad CSV ({exc})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several error types for bad files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for row_no, record in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {row_no}", record


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold the input, the references and the id."""

    input: str
    targets: tuple[str, ...]
    id: str | None


def detect_fields(record: dict[str, Any], input_field: str | None, target_field: str | None) -> FieldMap:
    """Pick the fields from the first record: the user's mapping, else known names.
    ``target_field`` may list several fields separated by commas (one reference each)."""
    fields = list(record)
    input_name = input_field or next((f for f in INPUT_FIELD_NAMES if f in record), None)
    if input_name is None:
        raise DataError(
            f"no input field found among {fields}; name it with --input-field "
            f"(looked for {', '.join(INPUT_FIELD_NAMES)})"
        )
    if target_field:
        targets = tuple(t.strip() for t in target_field.split(",") if t.strip())
    else:
        numbered = sorted((f for f in record if f.startswith("summary") and f[7:].isdigit()), key=lambda f: int(f[7:]))
        found = next((f for f in TARGET_FIELD_NAMES if f in record and f != input_name), None)
        targets = (found,) if found else tuple(numbered)
    id_name = next((f for f in ("id", "fname") if f in record), None)
    return FieldMap(input=input_name, targets=targets, id=id_name)


def _as_reference(value: Any, field: str, where: str) -> list[str]:
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, bool | int | float):  # class labels such as SST-2's 0/1
        return [str(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise DataError(f"{where}: field '{field}' must be a non-empty string or a list of them, got {value!r:.80}")


def to_example(record: dict[str, Any], fields: FieldMap, where: str, fallback_id: str) -> Example:
    """Turn one record into an Example, or raise a DataError naming ``where``."""
    if fields.input not in record:
        raise DataError(f"{where}: missing input field '{fields.input}'; the row has fields {list(record)}")
    text = record[fields.input]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: input field '{fields.input}' must be a non-empty string, got {text!r:.80}")
    references: list[str] = []
    for name in fields.targets:
        if name not in record:
            raise DataError(f"{where}: missing reference field '{name}'; the row has fields {list(record)}")
        references.extend(_as_reference(record[name], name, where))
    example_id = str(record[fields.id]) if fields.id and record.get(fields.id) is not None else fallback_id
    return Example(id=example_id, input=text, references=tuple(references))


def load_examples(
    source: str | Path,
    split: str | None = None,
    *,
    input_field: str | None = None,
    target_field: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a built-in dataset by name (``dialogsum``) or a file by path.

    ``split`` picks a built-in dataset's split (``dev``/``test``); files have none.
    ``limit`` keeps the first N rows in file order.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    name = str(source)
    if name.lower() in BUILTIN_DATASETS:
        path = builtin_path(name.lower(), split)
    else:
        path = Path(name).expanduser()
        if split is not None:
            raise DataError(f"--split applies to built-in datasets ({', '.join(BUILTIN_DATASETS)}), not to the file {path}")
        if not path.exists():
            raise DataError(f"no such data file: {path} (built-in datasets: {', '.join(BUILTIN_DATASETS)})")
    examples: list[Example] = []
    seen: dict[str, str] = {}
    fields: FieldMap | None = None
    for index, (where, record) in enumerate(iter_records(path), start=1):
        if fields is None:
            try:
                fields = detect_fields(record, input_field, target_field)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
        example = to_example(record, fields, where, fallback_id=f"{path.stem}-{index}")
        if example.id in seen:
            raise DataError(f"{where}: id '{example.id}' already used at {seen[example.id]}; ids must be unique")
        seen[example.id] = where
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples
