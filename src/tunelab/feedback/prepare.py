"""Fill a labeling database: k sampled completions per prompt from a model, or
completions made elsewhere."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.data.loading import iter_records
from tunelab.errors import DataError
from tunelab.feedback.store import LabelStore
from tunelab.generation.settings import GenerationSettings


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Rows {"prompt": ..., "id"?: ...} from JSONL/CSV; errors name file:line."""
    rows = []
    for where, record in iter_records(Path(path)):
        text = record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: each row needs a non-empty 'prompt'")
        unknown = set(record) - {"prompt", "id"}
        if unknown:
            raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; a prompt row has 'prompt' and optional 'id'")
        rows.append({"prompt": text, "id": None if record.get("id") is None else str(record["id"])})
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def read_completions(path: str | Path) -> list[dict[str, Any]]:
    """Rows {"prompt": ..., "completions": [...], "id"?: ...}; at least two distinct completions each."""
    rows = []
    for where, record in iter_records(Path(path)):
        unknown = set(record) - {"prompt", "completions", "id"}
        if unknown:
            raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; a row has 'prompt', 'completions' and optional 'id'")
        text, completions = record.get("prompt"), record.get("completions")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: each row needs a non-empty 'prompt'")
        if not isinstance(completions, list) or len(completions) < 2 or not all(isinstance(c, str) and c.strip() for c in completions):
            raise DataError(f"{where}: 'completions' must be a list of at least 2 non-empty strings")
        rows.append({"prompt": text, "completions": completions, "id": None if record.get("id") is None else str(record["id"])})
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def render_prompts(tokenizer: Any, prompts: Sequence[str], is_encoder_decoder: bool) -> tuple[list[str], bool]:
    """The prompt as the model should see it: in its chat template when it has one (an
    instruct model answers the user turn), else as is. Returns (texts, add_special_tokens)."""
    if getattr(tokenizer, "chat_template", None) and not is_encoder_decoder:
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts], False
    return list(prompts), True


def sample_completions(loaded: Any, prompts: Sequence[str], k: int, settings: GenerationSettings,
                       *, progress: bool = True) -> list[list[str]]:
    """k sampled completions per prompt, in one batched generation pass (each prompt
    repeated k times; the batch shares one seeded sampler, so the k differ)."""
    from tunelab.generation import generate

    if k < 2:
        raise DataError("--k must be at least 2: a ranking needs two completions")
    texts, special = render_prompts(loaded.tokenizer, prompts, loaded.is_encoder_decoder)
    repeated = [t for t in texts for _ in range(k)]
    outputs = generate(loaded.model, loaded.tokenizer, repeated, settings, add_special_tokens=special,
                       progress=progress, desc="completions")
    return [[o.text.strip() for o in outputs[i * k : (i + 1) * k]] for i in range(len(prompts))]


def prepare(db: str | Path, *, prompts: str | Path | None = None, completions: str | Path | None = None,
            model: str | None = None, adapter: str | None = None, k: int = 4,
            settings: GenerationSettings | None = None, criterion: str | None = None,
            labels_per_prompt: int | None = None, progress: bool = True) -> int:
    """Add prompts with their completions to the database (created if new); returns how many."""
    if (prompts is None) == (completions is None):
        raise DataError("give either --prompts (with --model, to generate) or --completions (to import)")
    store = LabelStore(db, create=True)
    try:
        if criterion:
            store.set_setting("criterion", criterion)
        if labels_per_prompt:
            store.set_setting("labels_per_prompt", str(labels_per_prompt))
        if completions is not None:
            rows = read_completions(completions)
            origin: dict[str, Any] = {"source": str(completions)}
        else:
            if not model:
                raise DataError("--prompts needs --model to generate completions")
            from tunelab.models import load_for_inference

            rows = read_prompts(prompts)
            settings = settings or GenerationSettings(do_sample=True, temperature=0.9, top_p=0.95, top_k=0, max_new_tokens=128)
            loaded = load_for_inference(model, adapter)
            generated = sample_completions(loaded, [r["prompt"] for r in rows], k, settings, progress=progress)
            for row, texts in zip(rows, generated):
                # an empty or repeated sample gives a labeler nothing to rank
                row["completions"] = list(dict.fromkeys(t for t in texts if t.strip()))
            origin = {"model": model, "adapter": adapter, "k": k, "generation": dataclasses.asdict(settings)}
        kept = [r for r in rows if len(r["completions"]) >= 2]
        if len(kept) < len(rows):
            print(f"tunelab label prepare: skipped {len(rows) - len(kept)} prompt(s) left with fewer than 2 distinct "
                  "non-empty completions", file=sys.stderr)
        for row in kept:
            store.add_prompt(row["prompt"], row["completions"], source_id=row["id"], origin=origin)
        return len(kept)
    finally:
        store.close()
