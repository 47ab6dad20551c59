"""Labels out: a rankings file and the pairs it implies, in the alignment formats that
`tunelab train` (stage: reward or dpo) and `tunelab reward eval` read unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.alignment.preferences import ranking_to_pairs, write_pairs
from tunelab.errors import DataError
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
        Path(rankings_out).parent.mkdir(parents=True, exist_ok=True)
        with open(rankings_out, "w", encoding="utf-8") as handle:
            for row in rankings:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"rankings": len(rankings), "pairs": written}
