"""The holistic report as Markdown: one table per scenario, a row per model, the metrics
side by side (accuracies in %, with the 95% interval of acc)."""

from __future__ import annotations

import math
from typing import Any

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
            cells = [cell(m, key, scale) for key, _, scale in present]
            lines.append(f"| {label} | {m['n']} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cell(metrics: dict[str, Any], key: str, scale: float) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value * scale:.1f}" if scale == 100 else f"{value:.3f}"
    interval = metrics.get(f"{key}_ci") if key == "acc" else None
    return text + (f" ({interval[0] * 100:.1f}–{interval[1] * 100:.1f})" if interval else "")
