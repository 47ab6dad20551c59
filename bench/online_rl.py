"""One step of PPO, RLOO and GRPO side by side: where the time goes, and peak memory.

    python bench/online_rl.py [--steps 3] [--rollouts 16] [--reward runs/sst2-sentiment-classifier/final]

Lab A's set-up (recipes/sentiment-*.yaml): SmolLM2-135M-Instruct with a LoRA policy (r16,
all seven projections), SST-2 openings continued by 16-24 sampled tokens, the SST-2
classifier's reward (or, if it has not been trained, a function reward so the steps still
run: scoring time is then ~0), 2 epochs over minibatches of 8. Every method makes the
same number of rollouts per step: PPO samples 1 response for each of --rollouts prompts,
RLOO and GRPO 4 for each of --rollouts / 4 (their design: samples of a prompt are
compared with each other), from the same prompt pool in the same seeded order. Each
method runs in its own process, one after the other, with the same settings otherwise;
each step is split into rollout generation, reward scoring and the update (old and
reference log-probs, PPO's values, advantages, the clipped epochs). Writes
runs/bench/online_rl.json and prints a table with ratios to PPO.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

METHODS = ("ppo", "rloo", "grpo")
PARTS = ("generation_seconds", "scoring_seconds", "update_seconds")


def length_reward(prompts, responses):
    """Stand-in reward when no classifier is trained: longer is better."""
    return [len(r) / 100 for r in responses]


def worker(method: str, args: argparse.Namespace) -> dict:
    from tunelab.alignment.ppo import PPOTrainer
    from tunelab.recipe import load_recipe

    have_classifier = Path(args.reward).is_dir()
    group = 1 if method == "ppo" else 4
    config = load_recipe(Path(f"recipes/sentiment-{method}.yaml"), [
        f"max_steps={args.steps}", f"ppo.reward={args.reward if have_classifier else 'bench:length_reward'}",
        f"ppo.rollout_batch_size={args.rollouts // group}", f"ppo.group_size={max(group, 2)}",
        "eval_data=null", "save_steps=0", f"output_dir=runs/bench/online_rl-{method}"])
    trainer = PPOTrainer(config, progress=False, reward=None if have_classifier else length_reward)
    result = trainer.train()
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    means = {p: statistics.fmean(r[p] for r in rows) for p in PARTS}
    return {"method": method, "steps": len(rows), "prompts_per_step": args.rollouts // group, "samples_per_prompt": group,
            "rollouts_per_step": args.rollouts, "reward": args.reward if have_classifier else "length_reward (bench/online_rl.py)",
            "mean_response_tokens": statistics.fmean(r["response_length"] for r in rows),
            **{p: round(v, 2) for p, v in means.items()}, "step_seconds": round(sum(means.values()), 2),
            "trainable_params": result.summary["trainable_params"], "peak_memory_mb": result.summary["peak_memory_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=16, help="rollouts per step (a multiple of 4)")
    parser.add_argument("--reward", default="runs/sst2-sentiment-classifier/final")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/online_rl.json"))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rollouts % 4:
        parser.error("--rollouts must be a multiple of 4 (RLOO and GRPO sample 4 per prompt)")
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    if not Path(args.reward).is_dir():
        print(f"bench/online_rl.py: {args.reward} not found; scoring with a function reward instead", file=sys.stderr)
    results = []
    for method in METHODS:  # one process each: no method inherits another's allocations or caches
        done = subprocess.run([sys.executable, __file__, "--worker", method, "--steps", str(args.steps), "--rollouts",
                               str(args.rollouts), "--reward", args.reward], capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)})
        if done.returncode:
            sys.exit(f"bench/online_rl.py: {method} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    ppo = results[0]
    print("\n| method | prompts x samples | generation s | scoring s | update s | step s | vs PPO | peak MB | vs PPO |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['prompts_per_step']} x {r['samples_per_prompt']} | {r['generation_seconds']:.1f} | "
              f"{r['scoring_seconds']:.1f} | {r['update_seconds']:.1f} | {r['step_seconds']:.1f} | "
              f"{r['step_seconds'] / ppo['step_seconds']:.2f}x | {r['peak_memory_mb']:.0f} | {r['peak_memory_mb'] / ppo['peak_memory_mb']:.2f}x |")


if __name__ == "__main__":
    main()
