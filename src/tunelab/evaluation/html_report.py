"""The holistic report as one self-contained HTML page: a row per model, a column group
per scenario with the metrics side by side, the plots (accuracy against calibration,
accuracy per scenario with its interval) inline, and a before/after view of every model
against the first (the base): forgetting, calibration drift and alignment effects in one
table. No scripts and no external files, so it opens anywhere and can be mailed.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import Any

# (key, title, scale, better): scale 100 shows a fraction as %, better is +1 / -1 / 0 (|x| lower)
METRICS = (("acc", "acc", 100, 1), ("ece_10", "ECE", 100, -1), ("robustness", "robust", 100, 1),
           ("fairness", "fair", 100, 1), ("bias_ambig", "bias amb", 1, 0), ("bias_disambig", "bias dis", 1, 0),
           ("rouge1", "ROUGE-1", 100, 1), ("toxicity", "toxicity", 1, -1))

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.model{text-align:left;font-family:monospace;max-width:28em;overflow-wrap:anywhere}
td.better{background:#d9f2d9}td.worse{background:#f7d4d4}figure{display:inline-block;margin:0 16px 16px 0}
img{max-width:100%;border:1px solid #ddd}caption{caption-side:bottom;color:#666;font-size:12px}
"""


def render_html(results: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    models = list(results)
    scenarios = list(dict.fromkeys(s for m in results.values() for s in m))
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tunelab holistic report</title>"
             f"<style>{STYLE}</style></head><body><h1>Holistic evaluation</h1>",
             f"<p>{len(models)} models, {len(scenarios)} scenarios; format <b>{escape(str(settings.get('format')))}"
             f"</b>, {settings.get('shots', 0)} shots, seed {settings.get('seed', 0)}. Accuracies and calibration "
             "errors in %; intervals are 95% bootstrap intervals.</p>",
             "<h2>Every model, every scenario</h2>", metrics_table(results, scenarios)]
    if len(models) > 1:
        parts += [f"<h2>Against {escape(models[0])}</h2>", "<p>Change from the first model: green where the "
                  "metric moved the better way (higher accuracy, robustness and fairness; lower calibration error; "
                  "bias closer to 0).</p>", delta_table(results, scenarios)]
    parts += ["<h2>Plots</h2>", figure(accuracy_vs_calibration(results), "accuracy against 10-bin ECE: up and left is "
              "better"), figure(accuracy_bars(results, scenarios), "accuracy per scenario, with its 95% interval"),
              "</body></html>"]
    return "\n".join(parts)


def _value(metrics: dict[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _fmt(value: float | None, scale: float) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}" if scale == 100 else f"{value:.3f}"


def _columns(results: dict[str, dict[str, Any]], scenario: str) -> list[tuple]:
    return [m for m in METRICS if any(_value(r.get(scenario), m[0]) is not None for r in results.values())]


def metrics_table(results: dict[str, dict[str, Any]], scenarios: list[str]) -> str:
    groups = {s: _columns(results, s) for s in scenarios}
    head = "<tr><th rowspan=2>model</th>" + "".join(
        f"<th colspan={len(cols)}>{escape(s)}</th>" for s, cols in groups.items() if cols) + "</tr>"
    sub = "<tr>" + "".join(f"<th>{t}</th>" for cols in groups.values() for _, t, _, _ in cols) + "</tr>"
    rows = []
    for model, metrics in results.items():
        cells = []
        for s, cols in groups.items():
            for key, _, scale, _ in cols:
                value, interval = _value(metrics.get(s), key), (metrics.get(s) or {}).get(f"{key}_ci")
                title = f" title='95%: {_fmt(interval[0], scale)}–{_fmt(interval[1], scale)}'" if interval else ""
                cells.append(f"<td{title}>{_fmt(value, scale)}</td>")
        rows.append(f"<tr><td class=model>{escape(model)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{sub}{''.join(rows)}</table>"


def delta_table(results: dict[str, dict[str, Any]], scenarios: list[str]) -> str:
    base, *others = list(results)
    groups = {s: _columns(results, s) for s in scenarios}
    head = "<tr><th rowspan=2>model</th>" + "".join(
        f"<th colspan={len(cols)}>{escape(s)}</th>" for s, cols in groups.items() if cols) + "</tr>"
    sub = "<tr>" + "".join(f"<th>Δ {t}</th>" for cols in groups.values() for _, t, _, _ in cols) + "</tr>"
    rows = []
    for model in others:
        cells = []
        for s, cols in groups.items():
            for key, _, scale, better in cols:
                before, after = _value(results[base].get(s), key), _value(results[model].get(s), key)
                if before is None or after is None:
                    cells.append("<td>–</td>")
                    continue
                change = after - before
                gain = -(abs(after) - abs(before)) if better == 0 else better * change
                kind = " class=better" if gain > 1e-9 else " class=worse" if gain < -1e-9 else ""
                shown = f"{change * 100:+.1f}" if scale == 100 else f"{change:+.3f}"
                cells.append(f"<td{kind}>{shown}</td>")
        rows.append(f"<tr><td class=model>{escape(model)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{sub}{''.join(rows)}</table>"


def figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return f"<figure><img src='data:image/png;base64,{data}' alt='{escape(caption)}'><figcaption>{escape(caption)}" \
           "</figcaption></figure>"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def accuracy_vs_calibration(results: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for model, metrics in results.items():
        points = [(m["ece_10"], m["acc"], s) for s, m in metrics.items() if _value(m, "ece_10") is not None]
        ax.scatter([100 * p[0] for p in points], [100 * p[1] for p in points], label=model[-40:], alpha=0.8)
        for x, y, s in points:
            ax.annotate(s, (100 * x, 100 * y), fontsize=7, alpha=0.7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("10-bin ECE (%)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def accuracy_bars(results: dict[str, dict[str, Any]], scenarios: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in scenarios if any(_value(m.get(s), "acc") is not None for m in results.values())]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(scenarios) * max(1, len(results)) ** 0.5), 4))
    width = 0.8 / max(len(results), 1)
    for k, (model, metrics) in enumerate(results.items()):
        xs, ys, errors = [], [], [[], []]
        for i, s in enumerate(scenarios):
            value = _value(metrics.get(s), "acc")
            if value is None:
                continue
            low, high = (metrics[s].get("acc_ci") or (value, value))
            xs.append(i + k * width)
            ys.append(100 * value)
            errors[0].append(100 * (value - low))
            errors[1].append(100 * (high - value))
        ax.bar(xs, ys, width, yerr=errors, capsize=2, label=model[-40:])
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(scenarios))], scenarios, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
