"""PPO, RLOO, GRPO, best-of-n and DPO on rollout pairs, each given the same training time.

    python bench/equal_compute.py --lab sentiment [--budget 360] [--eval-seconds 120]
        [--eval-limit 100] [--seed 0] [--out runs/compare-sentiment]
    python bench/equal_compute.py --lab redteam --budget 480 --eval-seconds 240

Each method is its lab's shipped recipe (recipes/sentiment-<method>.yaml, recipes/
redteam-detox-<method>.yaml) run by `tunelab train` in its own process, one after the
other. In Lab B, PPO's recipe trains on every request; here it is given the prompt rule
of the others (the requests the toxicity classifier scores most toxic, of the first
800), so that only the method differs. Three things are changed for all alike:
``max_seconds`` (the budget), ``eval_seconds`` (a held-out evaluation each time the
training clock passes another multiple of it) and ``eval_limit`` (the held-out prompts).
The training clock counts training work only: the rollouts, scoring and updates of
PPO/RLOO/GRPO, the sampling and scoring of rejection sampling and of rollout DPO (and
DPO's reference pass) and their fine-tuning steps; not model loading, and not the
held-out evaluations, which are the same greedy answers to the same prompts for every
method. A method whose recipe ends before the budget (the two sampling methods fine-tune
for a fixed number of epochs) stops there, and a method's sampling before its first step
is not cut short (so it can overrun the budget): the table's training seconds say how
much each used.

Writes <out>/compare.json, <out>/compare.png (the held-out mean probability of the
rewarded class against training seconds, one line per method) and prints a Markdown
table. Runs left in <out>/<method>/ are the usual run folders (eval.json, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("ppo", "rloo", "grpo", "best-of-n", "rollout-dpo")
LABS = {  # lab: (recipe name prefix, extra overrides by method)
    "sentiment": ("sentiment", {}),
    "redteam": ("redteam-detox", {"ppo": ["limit=800", "ppo.hardest_prompts=128", "ppo.hardest_by=prompt"]}),
}


def run_method(recipe: Path, folder: Path, args: argparse.Namespace, extra: list[str]) -> tuple[float, int]:
    """One method in its own process: (wall seconds, model loading included; exit code)."""
    command = [sys.executable, "-m", "tunelab", "train", str(recipe), f"seed={args.seed}",
               f"max_seconds={args.budget}", f"eval_seconds={args.eval_seconds}", f"eval_limit={args.eval_limit}",
               "save_steps=0", *extra, *args.set, "--output-dir", str(folder)]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - started, code


def curve(folder: Path) -> list[dict[str, float]]:
    """(training seconds, held-out numbers) from before training to after."""
    comparison = json.loads((folder / "eval.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    points = [{"seconds": 0.0, **_numbers(comparison["before"])}]
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "heldout_reward_mean" in record:
            points.append({"seconds": record["elapsed"], **{k.removeprefix("heldout_"): v for k, v in record.items()
                                                            if k.startswith("heldout_")}})
    points.append({"seconds": summary["train_seconds"], **_numbers(comparison["after"])})
    return points


def _numbers(summary: dict) -> dict[str, float]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def plot(results: dict, out: Path, lab: str, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "label_probability_mean" if "label_probability_mean" in next(iter(results.values()))["curve"][0] else "reward_mean"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method, result in results.items():
        points = result["curve"]
        ax.plot([p["seconds"] for p in points], [p[key] for p in points], "o-", label=method)
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training seconds (2 CPU cores; evaluation not counted)")
    ax.set_ylabel("held-out P(rewarded class)" if key == "label_probability_mean" else "held-out reward")
    ax.set_title(f"{lab}: every method given {budget:g} s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def table(results: dict) -> str:
    lines = ["| method | steps | training s | wall s | held-out reward before → after | class probability before → after "
             "| > 0.5 | tokens | distinct-2 | monitor |",
             "|---|---:|---:|---:|---|---|---|---|---|---|"]
    for method, r in results.items():
        before, after = r["before"], r["after"]

        def pair(key: str, digits: int = 3) -> str:
            return f"{before[key]:.{digits}f} → {after[key]:.{digits}f}" if key in after else "—"

        lines.append(f"| {method} | {r['steps']} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
                     f"{pair('reward_mean')} | {pair('label_probability_mean')} | {pair('label_probability_over_half', 2)} | "
                     f"{pair('response_tokens_mean', 1)} | {pair('distinct_2')} | {pair('monitor_reward_mean')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", choices=sorted(LABS), required=True)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, in run order")
    parser.add_argument("--budget", type=float, default=360.0, help="training seconds per method (max_seconds)")
    parser.add_argument("--eval-seconds", type=float, default=120.0, help="held-out evaluation every this many training seconds")
    parser.add_argument("--eval-limit", type=int, default=100, help="held-out prompts (the first N of the recipe's eval split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more recipe override for every method (repeatable), e.g. a quick check: --set limit=16")
    parser.add_argument("--out", type=Path, help="default runs/compare-<lab>")
    args = parser.parse_args()
    out = (args.out or Path("runs") / f"compare-{args.lab}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    prefix, extras = LABS[args.lab]
    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    results = {}
    for method in methods:
        recipe = ROOT / "recipes" / f"{prefix}-{method}.yaml"
        folder = out / method
        wall, code = run_method(recipe, folder, args, extras.get(method, []))
        if code != 0:  # one method failing must not cost the others their run
            print(f"{method} failed (exit {code}): see {folder.with_suffix('.log')}", file=sys.stderr)
            continue
        comparison = json.loads((folder / "eval.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        results[method] = {"recipe": recipe.name, "steps": summary["steps"], "train_seconds": summary["train_seconds"],
                           "wall_seconds": round(wall, 1), "before": _numbers(comparison["before"]),
                           "after": _numbers(comparison["after"]), "curve": curve(folder)}
        (out / "compare.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                      "results": results}, indent=2))
    if not results:
        return 1
    plot(results, out / "compare.png", args.lab, args.budget)
    print(table(results))
    print(f"\n{out / 'compare.json'}, {out / 'compare.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
