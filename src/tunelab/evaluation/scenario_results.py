"""From a scenario's raw scores (``ScoredScenario``) to what the report shows: its metrics
(accuracy three ways, calibration, robustness and fairness as HELM's worst case, BBQ's
bias, efficiency) and one row per item for ``items.jsonl``. Predictions are computed once
and shared by both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation import choice_metrics as cm
from tunelab.evaluation.perturbations import FAIRNESS, ROBUSTNESS
from tunelab.evaluation.scoring import ScoredScenario
from tunelab.evaluation.settings import EvalSettings


def choice_results(name: str, kind: str, scored: ScoredScenario, settings: EvalSettings,
                   label: str) -> tuple[dict[str, Any], list[dict]]:
    """The scenario's metrics, and its item rows labelled with the model and scenario."""
    predicted = [cm.predictions(r) for r in scored.records]
    right = [p["pred"] in r["gold"] for p, r in zip(predicted, scored.records)]
    return metrics(kind, scored, settings, right), item_rows(label, name, scored, predicted, right)


def metrics(kind: str, scored: ScoredScenario, settings: EvalSettings, right: list[bool]) -> dict[str, Any]:
    records = scored.records
    if kind == "mc2":
        out = cm.mc2_metrics(records, settings.bootstrap, settings.seed)
    else:
        out = cm.choice_metrics(records, settings.bootstrap, settings.seed)
    if kind == "bbq":
        out.update(cm.bbq_metrics(records))
    if scored.perturbed:
        for group, names in (("robustness", ROBUSTNESS), ("fairness", FAIRNESS)):
            per_name, worst = worst_case(scored.perturbed, right, records, list(names))
            out.update(per_name)
            out[group] = worst
    seconds = scored.seconds
    out.update(seconds=seconds, seconds_per_item=seconds / max(len(records), 1),
               tokens_per_second=scored.tokens / seconds if seconds else 0.0, peak_memory_gb=scored.peak_memory_gb)
    return out


def worst_case(perturbed: dict[str, dict[int, list[float]]], right: list[bool], records: list[dict],
               names: Sequence[str]) -> tuple[dict[str, float], float]:
    """Accuracy under each perturbation (``acc_<name>``; an item it left unchanged keeps
    its original answer), and HELM's worst case: an item counts only if it is right on
    the original and under every perturbation."""
    per_name, everywhere = {}, list(right)
    for name in names:
        scores = perturbed.get(name, {})
        under = [cm.argmax(scores[k]) in r["gold"] if k in scores else right[k] for k, r in enumerate(records)]
        per_name[f"acc_{name}"] = sum(under) / len(records)
        everywhere = [a and b for a, b in zip(everywhere, under)]
    return per_name, sum(everywhere) / len(records)


def item_rows(label: str, name: str, scored: ScoredScenario, predicted: list[dict], right: list[bool]) -> list[dict]:
    """Every item's option log-probabilities and probabilities, its three predictions, its
    correctness and its prediction under each perturbation that changed it."""
    return [{"model": label, "scenario": name, **record, **predicted[k],
             "probabilities": cm.option_probabilities(record["logprobs"]), "correct": right[k],
             "perturbed": {p: cm.argmax(scores[k]) for p, scores in scored.perturbed.items() if k in scores}}
            for k, record in enumerate(scored.records)]
