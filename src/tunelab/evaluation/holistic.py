"""The holistic report (HELM's idea, for the models you just made): every scenario scored
for accuracy, calibration, robustness, fairness, bias and efficiency, for several models
side by side, with every item's prediction kept.

``evaluate_models`` writes ``results.json`` ({"models": {MODEL: {SCENARIO: metrics}}}),
``items.jsonl`` (one row per model, scenario and item), ``report.md`` and ``report.html``. Each (model,
scenario, settings) result is cached under ``cache/``, so adding a model to a report
scores only that model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation import choice_metrics as cm
from tunelab.evaluation.html_report import render_html
from tunelab.evaluation.loglik import score_items
from tunelab.evaluation.perturbations import FAIRNESS, ROBUSTNESS, perturb_row
from tunelab.evaluation.scenarios import GENERATIVE, Item, Scenario, scenario, with_shots
from tunelab.evaluation.settings import EvalSettings
from tunelab.evaluation.summarization import Toxicity, summarize, summary_metrics
from tunelab.files import write_json, write_jsonl, write_text

# --- items ------------------------------------------------------------------------------------

def stratified_subset(items: list[Item], size: int, seed: int) -> list[Item]:
    """``size`` items drawn in proportion from each stratum (gold answer x category x
    context condition), seeded: the same subset for every model (tinyBenchmarks' idea,
    without its IRT weighting)."""
    if size >= len(items):
        return items
    strata: dict[tuple, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        strata[(item.gold, item.meta.get("category"), item.meta.get("ambiguous"))].append(k)
    rng = random.Random(f"subset:{seed}")
    quotas = {s: size * len(members) / len(items) for s, members in strata.items()}
    counts = {s: math.floor(q) for s, q in quotas.items()}
    for s in sorted(quotas, key=lambda s: (counts[s] - quotas[s], str(s)))[: size - sum(counts.values())]:
        counts[s] += 1  # the largest remainders get the items left over
    chosen = [k for s, members in sorted(strata.items(), key=lambda kv: str(kv[0]))
              for k in rng.sample(members, counts[s])]
    return [items[k] for k in sorted(chosen)]


def in_chat(items: list[Item], tokenizer: Any) -> list[Item]:
    """Each context as a user turn of the chat template, with the generation prompt; the
    options lose their leading delimiter, as the reply starts the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError("this model's tokenizer has no chat template; leave --chat-template off")
    def wrap(text: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return [Item(i.id, wrap(i.context), tuple(o[1:] if o.startswith(" ") else o for o in i.options), i.gold,
                 i.lengths, i.meta) for i in items]


def build_items(spec: Scenario, settings: EvalSettings) -> list[Item]:
    """The scenario's items under the settings' format, fast-mode subset and limit
    (without shots)."""
    items = spec.items(settings.format)
    items = stratified_subset(items, settings.items, settings.seed) if settings.items else items
    return items[: settings.limit] if settings.limit else items


def perturbed_items(spec: Scenario, items: list[Item], rows: dict[str, dict], shots: list[Item],
                    settings: EvalSettings, name: str) -> dict[int, Item]:
    """The items whose input the perturbation changes, rebuilt from their perturbed rows
    (an unchanged item would score the same, so it is not scored again). ``rows``: the
    scenario's rows by item id; ``shots``: the solved examples before each item."""
    changed = {}
    for k, item in enumerate(items):
        row = perturb_row(rows[item.id], spec.text_fields, name, item.id, settings.seed, spec.answer_fields)
        new = spec.build(row, item.id, settings.format)
        new = with_shots([new], shots)[0] if shots else new
        if new.context != item.context:
            changed[k] = new
    return changed


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class ScenarioRun:
    """A scenario's per-item scores for one model, and what they cost."""

    items: list[Item]
    logprobs: list[list[float]]
    unconditional: list[list[float]] | None = None
    perturbed: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # perturbation -> item -> scores
    seconds: float = 0.0
    tokens: int = 0


def score_scenario(model: Any, tokenizer: Any, spec: Scenario, settings: EvalSettings,
                   bar: Any = None) -> ScenarioRun:
    """Every pass over the scenario's items (plain, unconditional, each perturbation).
    ``bar`` (a tqdm bar sized by ``passes``) advances per batch and shrinks by the items
    a perturbation leaves unchanged, so its ETA stays honest."""
    items = build_items(spec, settings)
    shots = spec.shot_examples(settings.format, settings.shots, settings.seed) if settings.shots else []
    items = with_shots(items, shots) if shots else items
    prepare = (lambda xs: in_chat(xs, tokenizer)) if settings.chat_template else (lambda xs: xs)
    started = time.perf_counter()

    def score(batch: list[Item], unconditional: bool = False) -> list[list[float]]:
        scores, tokens = score_items(model, tokenizer, prepare(batch), batch_size=settings.batch_size,
                                     unconditional=unconditional, progress=bar.update if bar is not None else None)
        run.tokens += tokens
        return scores

    run = ScenarioRun(items, [])
    run.logprobs = score(items)
    if settings.mutual_info and spec.kind != "mc2":
        run.unconditional = score(items, unconditional=True)
    if settings.perturb and spec.text_fields and spec.kind != "mc2":
        rows = spec.rows_by_id()
        for name in (*ROBUSTNESS, *FAIRNESS):
            changed = perturbed_items(spec, items, rows, shots, settings, name)
            if bar is not None:
                bar.total -= len(items) - len(changed)
            run.perturbed[name] = dict(zip(changed, score(list(changed.values()))))
    run.seconds = time.perf_counter() - started
    return run


def passes(spec: Scenario, settings: EvalSettings) -> int:
    """How many times the scenario's items are scored, at most (for the progress bar)."""
    extra = spec.kind != "mc2"
    return (1 + int(settings.mutual_info and extra)
            + (len(ROBUSTNESS) + len(FAIRNESS)) * int(settings.perturb and bool(spec.text_fields) and extra))


# --- metrics ----------------------------------------------------------------------------------

def records(run: ScenarioRun) -> list[dict]:
    return [{"id": item.id, "gold": list(item.gold), "lengths": list(item.lengths), "logprobs": scores,
             "unconditional": run.unconditional[k] if run.unconditional else None, "meta": dict(item.meta)}
            for k, (item, scores) in enumerate(zip(run.items, run.logprobs))]


def worst_case(run: ScenarioRun, rows: list[dict], names: Sequence[str]) -> dict[str, float]:
    """Accuracy under each perturbation, and HELM's worst case: an item counts only if it
    is right on the original and under every perturbation."""
    right = [cm.predictions(r)["pred"] in r["gold"] for r in rows]
    out, everywhere = {}, list(right)
    for name in names:
        scores = run.perturbed.get(name, {})
        under = [cm.argmax(scores[k]) in r["gold"] if k in scores else right[k] for k, r in enumerate(rows)]
        out[f"acc_{name}"] = sum(under) / len(rows)
        everywhere = [a and b for a, b in zip(everywhere, under)]
    return {**out, "worst": sum(everywhere) / len(rows)}


def scenario_metrics(spec: Scenario, run: ScenarioRun, settings: EvalSettings) -> dict[str, Any]:
    rows = records(run)
    if spec.kind == "mc2":
        metrics = cm.mc2_metrics(rows, settings.bootstrap, settings.seed)
    else:
        metrics = cm.choice_metrics(rows, settings.bootstrap, settings.seed)
    if spec.kind == "bbq":
        metrics.update(cm.bbq_metrics(rows))
    if run.perturbed:
        robust, fair = worst_case(run, rows, list(ROBUSTNESS)), worst_case(run, rows, list(FAIRNESS))
        metrics.update({k: v for k, v in robust.items() if k != "worst"}, robustness=robust["worst"])
        metrics.update({k: v for k, v in fair.items() if k != "worst"}, fairness=fair["worst"])
    metrics.update(seconds=run.seconds, seconds_per_item=run.seconds / max(len(rows), 1),
                   tokens_per_second=run.tokens / run.seconds if run.seconds else 0.0, peak_memory_gb=peak_memory_gb())
    return metrics


def peak_memory_gb() -> float:
    """The GPU's peak allocation since the scenario started (see ``reset_peak_memory``),
    else the process's peak RSS so far (the CPU has no per-scenario counter)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def runtime() -> str:
    """Where models run here: part of the cache key, so CPU results are not reused on a GPU."""
    import torch

    return f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"


def item_rows(model_label: str, spec: Scenario, run: ScenarioRun) -> list[dict]:
    out = []
    for k, record in enumerate(records(run)):
        predicted = cm.predictions(record)
        row = {"model": model_label, "scenario": spec.name, **record, **predicted,
               "probabilities": cm.option_probabilities(record["logprobs"]),
               "correct": predicted["pred"] in record["gold"]}
        row["perturbed"] = {name: cm.argmax(scores[k]) for name, scores in run.perturbed.items() if k in scores}
        out.append(row)
    return out


# --- the report -------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    label: str  # as given on the command line
    model: str
    adapter: str | None = None


def model_specs(names: Sequence[str], base: str) -> list[ModelSpec]:
    """'base' is the base model; an adapter folder (peft or tunelab's) is applied to it;
    anything else is a model of its own (a folder, a registry name, a hub id)."""
    from tunelab.models.adapters import ARTIFACT_CONFIG, PEFT_CONFIG

    specs = []
    for name in names:
        path = Path(name)
        if name == "base":
            specs.append(ModelSpec(name, base))
        elif (path / PEFT_CONFIG).is_file() or (path / ARTIFACT_CONFIG).is_file():
            specs.append(ModelSpec(name, base, name))
        else:
            specs.append(ModelSpec(name, name))
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
    ``toxicity`` scores generated text (settings.toxicity names it, for the cache key)."""
    settings.validate()
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
    results, rows, loaded = {}, [], None
    for name in settings.scenarios:
        path = cache / f"{name}-{settings.key(name, runtime())}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
        else:
            loaded = loaded or load(spec)
            reset_peak_memory()
            saved = run_generative(loaded, settings, toxicity, progress) if name in GENERATIVE else \
                run_choices(loaded, spec.label, scenario(name), settings, progress)
            write_json(path, saved)
        results[name] = saved["metrics"]
        rows.extend({**row, "model": spec.label} for row in saved["items"])
    return results, rows


def run_choices(loaded: Any, label: str, spec: Scenario, settings: EvalSettings, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    total = len(build_items(spec, settings)) * passes(spec, settings)
    with tqdm(total=total, desc=f"{label} · {spec.name}", unit="item", disable=not progress) as bar:
        run = score_scenario(loaded.model, loaded.tokenizer, spec, settings, bar=bar)
    return {"metrics": scenario_metrics(spec, run, settings), "items": item_rows(label, spec, run)}


def run_generative(loaded: Any, settings: EvalSettings, toxicity: Toxicity | None, progress: bool) -> dict[str, Any]:
    if settings.toxicity and toxicity is None:
        raise TunelabError("settings name a toxicity classifier but no scorer was given")
    rows, seconds, new_tokens = summarize(loaded, limit=settings.items or settings.limit, shots=settings.shots,
                                          seed=settings.seed, chat_template=settings.chat_template,
                                          batch_size=settings.batch_size, progress=progress)
    metrics = summary_metrics(rows, seconds, new_tokens, toxicity)
    metrics["peak_memory_gb"] = peak_memory_gb()
    return {"metrics": metrics, "items": [{"scenario": "dialogsum", **row} for row in rows]}


COLUMNS = (("acc", "acc", 100), ("acc_norm", "acc_norm", 100), ("acc_mi", "acc_mi", 100), ("ece_10", "ECE-10", 100),
           ("brier", "Brier", 1), ("selective_acc_10", "sel@10", 100), ("robustness", "robust", 100),
           ("fairness", "fair", 100), ("bias_ambig", "bias (amb)", 1), ("bias_disambig", "bias (dis)", 1),
           ("rouge1", "ROUGE-1", 100), ("rougeL", "ROUGE-L", 100), ("bleu", "BLEU", 1), ("toxicity", "toxicity", 1),
           ("seconds_per_item", "s/item", 1))


def markdown_report(results: dict[str, dict[str, Any]]) -> str:
    """One table per scenario, a row per model; accuracies in %, with the 95% interval of acc."""
    blocks = []
    scenarios = list(dict.fromkeys(s for metrics in results.values() for s in metrics))
    for name in scenarios:
        present = [(key, title, scale) for key, title, scale in COLUMNS
                   if any(key in m.get(name, {}) for m in results.values())]
        lines = [f"### {name}", "", "| model | n | " + " | ".join(t for _, t, _ in present) + " |",
                 "|---|---:|" + "---:|" * len(present)]
        for label, metrics in results.items():
            m = metrics.get(name)
            if m is None:
                continue
            cells = [_cell(m, key, scale) for key, _, scale in present]
            lines.append(f"| {label} | {m['n']} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(metrics: dict[str, Any], key: str, scale: float) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value * scale:.1f}" if scale == 100 else f"{value:.3f}"
    interval = metrics.get(f"{key}_ci") if key == "acc" else None
    return text + (f" ({interval[0] * 100:.1f}–{interval[1] * 100:.1f})" if interval else "")
