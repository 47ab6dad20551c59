"""The holistic report (HELM's idea, for the models you just made): every scenario scored
for accuracy, calibration, robustness, fairness, bias and efficiency, for several models
side by side, with every item's prediction kept.

``evaluate_models`` writes ``results.json`` ({"models": {MODEL: {SCENARIO: metrics}}}),
``items.jsonl`` (one row per model, scenario and item), ``report.md`` and ``report.html``.
Each (model, scenario, settings) result's raw scores are cached under ``cache/``: adding
a model to a report scores only that model, and metrics (intervals, toxicity) are
computed again from the scores each time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.html_report import render_html
from tunelab.evaluation.markdown_report import markdown_report
from tunelab.evaluation.scenario_results import choice_results
from tunelab.evaluation.scenarios import GENERATIVE, Scenario, scenario
from tunelab.evaluation.scoring import ScoredScenario, build_items, passes, peak_memory_gb, reset_peak_memory, \
    runtime, score_scenario
from tunelab.evaluation.settings import EvalSettings
from tunelab.evaluation.summarization import Toxicity, summarize, summary_metrics
from tunelab.files import write_json, write_jsonl, write_text


LABEL = re.compile(r"^[A-Za-z0-9_.-]+=")  # 'label=' before a model


@dataclass
class ModelSpec:
    label: str  # as given on the command line
    model: str
    adapter: str | None = None


def model_specs(names: Sequence[str], base: str) -> list[ModelSpec]:
    """'base' is the base model; an adapter folder (peft or tunelab's) is applied to it;
    anything else is a model of its own (a folder, a registry name, a hub id).
    ``label=where`` names a model in the report (``summarizer=runs/dialogsum-lora/final``);
    the label is not part of the cache key, so renaming scores nothing again."""
    from tunelab.models.adapters import ARTIFACT_CONFIG, PEFT_CONFIG

    specs = []
    for entry in names:
        label, _, name = entry.partition("=") if LABEL.match(entry) else ("", "", entry)
        label = label or name
        path = Path(name)
        if name == "base":
            specs.append(ModelSpec(label, base))
        elif (path / PEFT_CONFIG).is_file() or (path / ARTIFACT_CONFIG).is_file():
            specs.append(ModelSpec(label, base, name))
        else:
            specs.append(ModelSpec(label, name))
    if len({s.label for s in specs}) < len(specs):
        raise TunelabError(f"a model is named twice in {', '.join(names)}")
    return specs


def fingerprint(spec: ModelSpec) -> str:
    """What identifies a model's weights for the cache: its names, and for folders every
    top-level file's name, size and modification time (retraining changes them)."""
    parts = []
    for where in (spec.model, spec.adapter):
        if where is None:
            continue
        path = Path(where)
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()) \
            if path.is_dir() else []
        parts.append([str(path.resolve()) if path.exists() else where, files])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def evaluate_models(models: Sequence[ModelSpec], settings: EvalSettings, out: Path,
                    load: Callable[[ModelSpec], Any], progress: bool = True,
                    toxicity: Toxicity | None = None) -> dict[str, Any]:
    """Score every model on every scenario (cached), and write the report files.
    ``toxicity`` scores generated text (``settings.toxicity`` names it in the report)."""
    settings.validate()
    if settings.toxicity and toxicity is None:
        raise TunelabError("settings name a toxicity classifier but no scorer was given")
    out = Path(out)
    results: dict[str, dict[str, Any]] = {}
    all_items: list[dict] = []
    for spec in models:
        results[spec.label], rows = evaluate_model(spec, settings, out / "cache" / fingerprint(spec), load, progress,
                                                   toxicity)
        all_items.extend(rows)
    report = {"settings": {k: v for k, v in asdict(settings).items() if k != "batch_size"}, "models": results}
    write_json(out / "results.json", report)
    write_jsonl(out / "items.jsonl", all_items)
    write_text(out / "report.md", markdown_report(results) + "\n")
    write_text(out / "report.html", render_html(results, report["settings"]))
    return report


def evaluate_model(spec: ModelSpec, settings: EvalSettings, cache: Path, load: Callable[[ModelSpec], Any],
                   progress: bool, toxicity: Toxicity | None = None) -> tuple[dict[str, Any], list[dict]]:
    """One model's metrics per scenario and its item rows; the model is loaded only if a
    scenario's scores are not in ``cache`` yet."""
    results, rows, loaded = {}, [], None
    for name in settings.scenarios:
        path = cache / f"{name}-{settings.key(name, runtime())}.json"
        if path.is_file():
            raw = json.loads(path.read_text())
        else:
            loaded = loaded or load(spec)
            raw = generate_summaries(loaded, settings, progress) if name in GENERATIVE else \
                score_choices(loaded, spec.label, scenario(name), settings, progress).to_json()
            write_json(path, raw)
        if name in GENERATIVE:
            results[name], scenario_rows = summary_results(raw, toxicity, spec.label)
        else:
            results[name], scenario_rows = choice_results(name, scenario(name).kind, ScoredScenario.from_json(raw),
                                                          settings, spec.label)
        rows.extend(scenario_rows)
    return results, rows


def score_choices(loaded: Any, label: str, spec: Scenario, settings: EvalSettings, progress: bool) -> ScoredScenario:
    from tqdm.auto import tqdm

    items = build_items(spec, settings)
    with tqdm(total=len(items) * passes(spec, settings), desc=f"{label} · {spec.name}", unit="item",
              disable=not progress) as bar:
        return score_scenario(loaded.model, loaded.tokenizer, spec, settings, items=items, bar=bar)


def generate_summaries(loaded: Any, settings: EvalSettings, progress: bool) -> dict[str, Any]:
    """DialogSum's raw result: the summaries (with their references), seconds, new tokens
    and peak memory; scored by ``summary_results``."""
    reset_peak_memory()
    rows, seconds, new_tokens = summarize(loaded, limit=settings.items or settings.limit, shots=settings.shots,
                                          seed=settings.seed, chat_template=settings.chat_template,
                                          batch_size=settings.batch_size, progress=progress)
    return {"rows": rows, "seconds": seconds, "new_tokens": new_tokens, "peak_memory_gb": peak_memory_gb()}


def summary_results(raw: dict[str, Any], toxicity: Toxicity | None, label: str) -> tuple[dict[str, Any], list[dict]]:
    rows = [dict(row) for row in raw["rows"]]
    metrics = summary_metrics(rows, raw["seconds"], raw["new_tokens"], toxicity)  # adds each row's toxicity
    metrics["peak_memory_gb"] = raw["peak_memory_gb"]
    return metrics, [{"model": label, "scenario": "dialogsum", **row} for row in rows]
