"""Labels out: a rankings file and the pairs it implies, in the alignment formats that
`tunelab train` (stage: reward or dpo) and `tunelab reward eval` read unchanged."""

from __future__ import annotations

from pathlib import Path

from tunelab.alignment.preferences import ranking_to_pairs, write_pairs
from tunelab.errors import DataError
from tunelab.files import write_jsonl
from tunelab.feedback.store import LabelStore


def export(db: str | Path, out: str | Path, rankings_out: str | Path | None = None) -> dict[str, int]:
    """Write pairs JSONL (prompt, chosen, rejected, margin = rank gap, id = prompt:labeler)
    and, when asked, the rankings themselves. Returns counts."""
    store = LabelStore(db)
    try:
        rankings = list(store.rankings())
    finally:
        store.close()
    if not rankings:
        raise DataError(f"{db}: no judgements yet, nothing to export")
    pairs = [p for r in rankings for p in ranking_to_pairs(r["prompt"], r["completions"], r["ranks"], where=r["id"], id=r["id"])]
    written = write_pairs(pairs, out)
    if rankings_out is not None:
        write_jsonl(rankings_out, rankings)
    return {"rankings": len(rankings), "pairs": written}
