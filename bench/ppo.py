"""Where one PPO step's time goes: generation, scoring, update (tunelab, default model).

    python bench/ppo.py [--steps 3] [--batch-size 16] [--reward runs/toxicity-classifier/final]

The detox set-up of recipes/dialogsum-detox-ppo.yaml: SmolLM2-135M-Instruct with a LoRA
policy (r16, all seven projections), DialogSum dev prompts, sampled responses of 40-60
tokens, reward from the toxicity classifier (or, if it has not been trained, a function
reward so the step still runs: scoring time is then ~0), 2 PPO epochs over minibatches
of 4. Each step is split into rollout generation, reward scoring and the update
(old/reference log-probs and values, GAE, PPO epochs). Writes runs/bench/ppo.json.

TRL's PPO (`trl.experimental.ppo` in TRL 1.12; removed in 1.13) is the baseline where it
runs: TRL 1.12 needs `datasets`, which tunelab does not depend on, so the script reports
the ratio only when `import trl.experimental.ppo` succeeds in this environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def length_reward(prompts, responses):
    """Stand-in reward when no classifier is trained: shorter is better."""
    return [-len(r) / 100 for r in responses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reward", default="runs/toxicity-classifier/final")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ppo.json"))
    args = parser.parse_args()

    from tunelab.recipe import load_recipe
    from tunelab.alignment.ppo import PPOTrainer

    have_classifier = Path(args.reward).is_dir()
    reward_spec = args.reward if have_classifier else "length_reward (bench/ppo.py)"
    if not have_classifier:
        print(f"bench/ppo.py: {args.reward} not found; scoring with a function reward instead", file=sys.stderr)
    config = load_recipe(Path("recipes/dialogsum-detox-ppo.yaml"), [
        f"max_steps={args.steps}", "ppo.init_adapter=null", f"ppo.reward={reward_spec}",
        f"ppo.rollout_batch_size={args.batch_size}", "eval_data=null", "save_steps=0", "output_dir=runs/bench/ppo"])
    started = time.perf_counter()
    trainer = PPOTrainer(config, progress=True, reward=None if have_classifier else length_reward)
    load_seconds = time.perf_counter() - started
    result = trainer.train()
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    parts = ("generation_seconds", "scoring_seconds", "update_seconds")
    means = {p: statistics.fmean(r[p] for r in rows) for p in parts}
    total = sum(means.values())
    report = {
        "steps": len(rows), "rollouts_per_step": args.batch_size, "reward": reward_spec,
        "mean_response_tokens": statistics.fmean(r["response_length"] for r in rows),
        "load_seconds": round(load_seconds, 1), **{p: round(v, 2) for p, v in means.items()},
        "step_seconds": round(total, 2), "peak_memory_mb": result.summary["peak_memory_mb"],
        "trl_ratio": None,
    }
    try:
        import trl.experimental.ppo  # noqa: F401
        report["trl_ratio"] = "TRL 1.12 importable: run bench/ppo_trl.py for the side-by-side"
    except ImportError:
        report["trl_ratio"] = "not measured: TRL 1.12 (the last with PPO) is not installed here"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| part | seconds per step | share |\n|---|---:|---:|")
    for p in parts:
        print(f"| {p.replace('_seconds', '')} | {means[p]:.1f} | {100 * means[p] / total:.0f}% |")
    print(f"| whole step ({args.batch_size} rollouts, {report['mean_response_tokens']:.0f} tokens each) | {total:.1f} | 100% |")
    print(f"TRL: {report['trl_ratio']}")


if __name__ == "__main__":
    main()
