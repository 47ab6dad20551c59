"""Preference data: rankings become (prompt, chosen, rejected) pairs.

A JSONL row is one of
  * a pair:     {"prompt": ..., "chosen": ..., "rejected": ...}
  * a ranking:  {"prompt": ..., "completions": [a, b, c], "ranks": [1, 2, null]}
                (1 = best; equal ranks are ties and give no pair; null = 'not relevant',
                dropped before pairing)
  * an hh-rlhf transcript pair: {"chosen": "\\n\\nHuman: ...", "rejected": "\\n\\nHuman: ..."},
    whose shared prefix up to the last "\\n\\nAssistant:" is the prompt.
Optional fields anywhere: "id", "margin" (how far apart the pair was rated; used by the
reward model's margin loss). Anything else is an error naming file and line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.data.loading import BUILTIN_DATASETS, builtin_path, iter_records
from tunelab.data.transcripts import split_transcripts
from tunelab.errors import DataError
from tunelab.files import write_jsonl

PAIR_FIELDS = {"prompt", "chosen", "rejected"}
RANKING_FIELDS = {"prompt", "completions", "ranks"}
OPTIONAL_FIELDS = {"id", "margin"}


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    id: str | None = None


def ranking_to_pairs(
    prompt: str, completions: Sequence[str], ranks: Sequence[int | float | None], *, where: str = "ranking", id: str | None = None
) -> list[PreferencePair]:
    """Every pair a ranking implies: completion i beats j when rank_i < rank_j. Ties give
    no pair; None ranks ('not relevant') are dropped first. The margin is the rank gap."""
    if len(completions) != len(ranks):
        raise DataError(f"{where}: {len(completions)} completions but {len(ranks)} ranks")
    ranked = [(float(r), c) for c, r in zip(completions, ranks) if r is not None]
    for rank, completion in ranked:
        _check_text(completion, "completion", where)
    pairs = []
    for i, (rank_i, text_i) in enumerate(ranked):
        for rank_j, text_j in ranked[i + 1 :]:
            if rank_i == rank_j:
                continue
            better, worse = (text_i, text_j) if rank_i < rank_j else (text_j, text_i)
            if better == worse:
                continue  # the same text ranked twice says nothing
            pairs.append(PreferencePair(prompt, better, worse, abs(rank_i - rank_j), id))
    return pairs


def _check_text(value: object, name: str, where: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"{where}: '{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: '{name}' is empty")


def record_to_pairs(record: dict, where: str) -> list[PreferencePair]:
    """The pairs one JSONL row holds (see the module docstring for the three shapes)."""
    keys = set(record)
    unknown = keys - PAIR_FIELDS - RANKING_FIELDS - OPTIONAL_FIELDS
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; a row is a pair "
                        "(prompt, chosen, rejected), a ranking (prompt, completions, ranks) or an hh-rlhf "
                        "transcript pair (chosen, rejected), with optional id and margin")
    row_id = None if record.get("id") is None else str(record["id"])
    if "completions" in keys or "ranks" in keys:
        if not RANKING_FIELDS <= keys:
            raise DataError(f"{where}: a ranking needs prompt, completions and ranks; missing {sorted(RANKING_FIELDS - keys)}")
        _check_text(record["prompt"], "prompt", where)
        if not isinstance(record["completions"], list) or not isinstance(record["ranks"], list):
            raise DataError(f"{where}: completions and ranks must be lists")
        return ranking_to_pairs(record["prompt"], record["completions"], record["ranks"], where=where, id=row_id)
    if not {"chosen", "rejected"} <= keys:
        raise DataError(f"{where}: a pair needs 'chosen' and 'rejected'; missing {sorted({'chosen', 'rejected'} - keys)}")
    _check_text(record["chosen"], "chosen", where)
    _check_text(record["rejected"], "rejected", where)
    if record["chosen"] == record["rejected"]:
        raise DataError(f"{where}: chosen and rejected are the same text")
    if "prompt" in keys:
        _check_text(record["prompt"], "prompt", where)
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    else:
        prompt, chosen, rejected = split_transcripts(record["chosen"], record["rejected"], where=where)
        if not chosen.strip() or not rejected.strip():
            # hh-rlhf itself holds a few transcripts whose last answer is empty: such a
            # pair teaches nothing, so it is skipped (and counted) rather than fatal
            return []
    margin = record.get("margin")
    if margin is not None and not isinstance(margin, (int, float)):
        raise DataError(f"{where}: 'margin' must be a number")
    return [PreferencePair(prompt, chosen, rejected, None if margin is None else float(margin), row_id)]


def load_pairs(source: str | Path, split: str | None = None, limit: int | None = None) -> list[PreferencePair]:
    """Pairs from a built-in dataset (``hh-rlhf``) or a JSONL file of pairs, rankings or
    hh-rlhf transcripts; ``limit`` counts pairs."""
    source = str(source)
    if source in BUILTIN_DATASETS:
        path = builtin_path(source, split)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"no such preference file: {path} (built-in: hh-rlhf)")
    pairs: list[PreferencePair] = []
    empty = 0
    for where, record in iter_records(path):
        found = record_to_pairs(record, where)
        empty += not found and "completions" not in record
        pairs.extend(found)
        if limit is not None and len(pairs) >= limit:
            pairs = pairs[:limit]
            break
    if empty:
        print(f"tunelab: skipped {empty} transcript pair(s) in {path.name} whose last answer is empty", file=sys.stderr)
    if not pairs:
        raise DataError(f"{path}: no preference pairs (every ranking was a tie or empty?)")
    return pairs


def write_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> int:
    """Write pairs as JSONL (prompt, chosen, rejected, and margin/id when set); returns the count."""
    return write_jsonl(path, ({k: v for k, v in asdict(pair).items() if v is not None} for pair in pairs))
