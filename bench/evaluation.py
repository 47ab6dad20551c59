"""Log-likelihood evaluation speed: tunelab's shared-context scorer against
lm-evaluation-harness's Hugging Face backend, on the same items, in one run.

    python bench/evaluation.py [--limit 100] [--batch-size 8] [--tasks boolq,cb,...]

Both read the same shipped rows in lm-eval's formats (tunelab `--format lm-eval`; lm-eval
its own task files with the data swapped, tunelab.evaluation.lm_eval_check), the same
model folder (the default model unless --model), float32 on the CPU, the same batch size,
zero-shot, plain accuracy only (no perturbations, no unconditional pass). Each tool runs
in its own process, one after the other; the clock covers log-likelihood scoring only
(model loading, task loading and metrics are not counted for either). Prints items per
second per task and overall, the ratio, and the item-for-item agreement of predictions;
writes runs/bench/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("sst2", "boolq", "rte", "cb", "copa", "wic", "wsc", "truthfulqa_mc1", "truthfulqa_mc2")


def model_folder(name: str) -> str:
    from tunelab.models.loading import resolve_source

    return resolve_source(name)[0]


def tunelab_worker(args: argparse.Namespace) -> dict:
    from tunelab.evaluation.scoring import build_items, score_scenario
    from tunelab.evaluation.scenarios import scenario
    from tunelab.evaluation.settings import EvalSettings
    from tunelab.models import load_for_inference

    loaded = load_for_inference(args.model, device="cpu")
    settings = EvalSettings(scenarios=tuple(args.tasks), format="lm-eval", limit=args.limit, perturb=False,
                            mutual_info=False, bootstrap=0, batch_size=args.batch_size)
    out = {"seconds": 0.0, "tasks": {}}
    for name in args.tasks:
        spec = scenario(name)
        started = time.perf_counter()
        scored = score_scenario(loaded.model, loaded.tokenizer, spec, settings, items=build_items(spec, settings))
        seconds = time.perf_counter() - started
        out["seconds"] += seconds
        out["tasks"][name] = {"items": len(scored.records), "seconds": seconds,
                              "logprobs": [r["logprobs"] for r in scored.records]}
    return out


def lm_eval_worker(args: argparse.Namespace) -> dict:
    from tunelab.evaluation.lm_eval_check import run_lm_eval, write_tasks

    out = {"seconds": 0.0, "tasks": {}}
    for name in args.tasks:  # one task at a time, so each has its own time
        with tempfile.TemporaryDirectory() as folder:
            tasks = write_tasks(Path(folder), [name], args.limit)
            results, seconds = run_lm_eval(args.model, tasks, Path(folder), batch_size=args.batch_size)
        out["seconds"] += seconds
        out["tasks"][name] = {"items": len(results[name]["logprobs"]), "seconds": seconds, **results[name]}
    return out


def run_worker(tool: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", tool, "--model", args.model, "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--tasks", ",".join(args.tasks)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"bench/evaluation.py: {tool} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model folder or name (default: the default model)")
    parser.add_argument("--limit", type=int, default=100, help="items per task (the first N)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/evaluation.json"))
    parser.add_argument("--worker", choices=("tunelab", "lm-eval"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.worker:
        result = (tunelab_worker if args.worker == "tunelab" else lm_eval_worker)(args)
        print(json.dumps(result))
        return
    args.model = model_folder(args.model)  # both tools read the same converted folder
    results = {tool: run_worker(tool, args) for tool in ("lm-eval", "tunelab")}
    report(results, args)


def report(results: dict, args: argparse.Namespace) -> None:
    from tunelab.evaluation.lm_eval_check import agreement

    ours, theirs = results["tunelab"], results["lm-eval"]
    rows, same, total = [], 0, 0
    print("\n| task | items | lm-eval items/s | tunelab items/s | speed-up | same prediction |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.tasks:
        mine, other = ours["tasks"][name], theirs["tasks"][name]
        check = agreement([{"logprobs": lp} for lp in mine["logprobs"]], other)
        same, total = same + check["same_prediction"] * check["n"], total + check["n"]
        rows.append({"task": name, "items": mine["items"], "tunelab_seconds": mine["seconds"],
                     "lm_eval_seconds": other["seconds"], **check})
        print(f"| {name} | {mine['items']} | {other['items'] / other['seconds']:.1f} | {mine['items'] / mine['seconds']:.1f} | "
              f"{other['seconds'] / mine['seconds']:.2f}x | {100 * check['same_prediction']:.1f}% |")
    items = sum(r["items"] for r in rows)
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"| **all** | {items} | {items / theirs['seconds']:.1f} | {items / ours['seconds']:.1f} | **{ratio:.2f}x** | "
          f"{100 * same / total:.1f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"model": args.model, "limit": args.limit, "batch_size": args.batch_size, "items": items,
               "lm_eval_seconds": theirs["seconds"], "tunelab_seconds": ours["seconds"], "speedup": ratio,
               "same_prediction": same / total, "tasks": rows}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
