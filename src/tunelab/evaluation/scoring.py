"""Scoring one scenario for one model: which items (fast-mode subset, limit, shots, chat
template), every pass over them (plain, unconditional, each perturbation) and what it
cost. The result, ``ScoredScenario``, holds raw option log-probabilities only: it is what
the holistic report caches, and its metrics are computed from it (``scored_metrics``), so
a change of metric settings (bootstrap resamples) never scores a model again.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.loglik import score_items
from tunelab.evaluation.perturbations import FAIRNESS, ROBUSTNESS, perturb_row
from tunelab.evaluation.scenarios import Item, Scenario, with_shots
from tunelab.evaluation.settings import EvalSettings

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
    """The scenario's items under the settings' format, fast-mode subset, limit and shots
    (the chat template is applied at scoring time, as it needs the tokenizer)."""
    items = spec.items(settings.format)
    items = stratified_subset(items, settings.items, settings.seed) if settings.items else items
    items = items[: settings.limit] if settings.limit else items
    return with_shots(items, shot_examples(spec, settings)) if settings.shots else items


def shot_examples(spec: Scenario, settings: EvalSettings) -> list[Item]:
    return spec.shot_examples(settings.format, settings.shots, settings.seed) if settings.shots else []


def perturbed_items(spec: Scenario, items: list[Item], settings: EvalSettings, name: str,
                    rows: dict[str, dict], shots: list[Item]) -> dict[int, Item]:
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


def passes(spec: Scenario, settings: EvalSettings) -> int:
    """How many times the scenario's items are scored, at most (for the progress bar)."""
    return 1 + int(settings.mutual_info and has_mutual_info(spec)) + len(perturbations(spec, settings))


def has_mutual_info(spec: Scenario) -> bool:
    return spec.kind != "mc2"  # MC2 scores probability mass, not a prediction


def perturbations(spec: Scenario, settings: EvalSettings) -> tuple[str, ...]:
    """The perturbations scored: none where the inputs hold no free text (WiC's and WSC's
    answers point at positions in it; hh-rlhf transcripts) or for MC2."""
    if not (settings.perturb and spec.text_fields and spec.kind != "mc2"):
        return ()
    return (*ROBUSTNESS, *FAIRNESS)


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class ScoredScenario:
    """A scenario's raw scores for one model, and what they cost. ``records``: per item,
    what the metrics read (id, gold, lengths, logprobs, unconditional, meta);
    ``perturbed``: perturbation -> item index -> option log-probabilities, for the items
    the perturbation changed."""

    records: list[dict]
    perturbed: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    peak_memory_gb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["perturbed"] = {name: {str(k): v for k, v in scores.items()} for name, scores in self.perturbed.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoredScenario:
        perturbed = {name: {int(k): v for k, v in scores.items()} for name, scores in data["perturbed"].items()}
        return cls(data["records"], perturbed, data["seconds"], data["tokens"], data["peak_memory_gb"])


def score_scenario(model: Any, tokenizer: Any, spec: Scenario, settings: EvalSettings,
                   items: list[Item] | None = None, bar: Any = None) -> ScoredScenario:
    """Every pass over the scenario's items (``build_items`` unless given). ``bar`` (a tqdm
    bar sized by ``passes``) advances per batch and shrinks by the items a perturbation
    leaves unchanged, so its ETA stays honest."""
    items = build_items(spec, settings) if items is None else items
    prepare = (lambda xs: in_chat(xs, tokenizer)) if settings.chat_template else (lambda xs: xs)
    reset_peak_memory()
    started, tokens = time.perf_counter(), 0

    def score(batch: list[Item], unconditional: bool = False) -> list[list[float]]:
        nonlocal tokens
        scores, used = score_items(model, tokenizer, prepare(batch), batch_size=settings.batch_size,
                                   unconditional=unconditional, progress=bar.update if bar is not None else None)
        tokens += used
        return scores

    logprobs = score(items)
    unconditional = score(items, unconditional=True) if settings.mutual_info and has_mutual_info(spec) else None
    perturbed, names = {}, perturbations(spec, settings)
    rows, shots = (spec.rows_by_id(), shot_examples(spec, settings)) if names else ({}, [])
    for name in names:
        changed = perturbed_items(spec, items, settings, name, rows, shots)
        if bar is not None:
            bar.total -= len(items) - len(changed)
        perturbed[name] = dict(zip(changed, score(list(changed.values()))))
    records = [{"id": item.id, "gold": list(item.gold), "lengths": list(item.lengths), "logprobs": scores,
                "unconditional": unconditional[k] if unconditional else None, "meta": dict(item.meta)}
               for k, (item, scores) in enumerate(zip(items, logprobs))]
    return ScoredScenario(records, perturbed, time.perf_counter() - started, tokens, peak_memory_gb())


# --- efficiency -------------------------------------------------------------------------------

def peak_memory_gb() -> float:
    """The GPU's peak allocation since ``reset_peak_memory``, else the process's peak RSS
    so far (the CPU has no per-scenario counter)."""
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
