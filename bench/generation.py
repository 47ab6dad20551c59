"""Batched generation vs the one-example-at-a-time `model.generate` loop.

    python bench/generation.py [--limit 64] [--batch-size 16] [--max-new-tokens 60]

The same zero-shot DialogSum prompts (the default model's chat template), greedy, run
three ways in one process, one after another:

  * baseline: the course notebook's loop, `model.generate` on one example at a time;
  * hf-batched: `model.generate` on batches of 8 in file order, left-padded (what a
    user batching by hand gets);
  * tunelab: `tunelab.generation.generate` (length-sorted batches, per-chunk prefill,
    finished rows dropped from the batch and its KV cache).

Reports new tokens per second of each (tokens up to end-of-sequence), the ratios to
the baseline, and how many outputs differ from the baseline (float near-ties under
padding); those are shown. Writes runs/bench/generation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tunelab.data import load_examples
from tunelab.generation import GenerationSettings, generate
from tunelab.generation.batched import eos_token_ids
from tunelab.models import load_model
from tunelab.prompting import PromptBuilder


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def run_baseline(loaded, prompts, max_new_tokens, eos):
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            enc = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            out = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            outputs.append(_until_eos(out[0, enc["input_ids"].shape[1] :].tolist(), eos))
    return outputs


def run_hf_batched(loaded, prompts, max_new_tokens, eos, batch_size=8):
    tokenizer = loaded.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                out = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
                outputs.extend(_until_eos(row.tolist(), eos) for row in out[:, enc["input_ids"].shape[1] :])
    finally:
        tokenizer.padding_side = side
    return outputs


def run_tunelab(loaded, prompts, max_new_tokens, batch_size):
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    results = generate(loaded.model, loaded.tokenizer, prompts, settings, add_special_tokens=False, progress=False)
    return [r.token_ids for r in results]


def timed(fn, *args):
    started = time.perf_counter()
    outputs = fn(*args)
    return outputs, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=64, help="DialogSum test dialogues (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="tunelab batch size (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--skip-hf-batched", action="store_true", help="leave out the hand-batched model.generate run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/generation.json"))
    args = parser.parse_args()

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    builder = PromptBuilder(loaded.tokenizer, context_window=loaded.context_window)
    examples = load_examples("dialogsum", "test", limit=args.limit)
    prompts = [builder.build(e, []).text for e in examples]
    eos = eos_token_ids(loaded.model, loaded.tokenizer)  # the ids tunelab stops on too
    print(f"{len(prompts)} prompts, {sum(builder.count_tokens(p) for p in prompts)} prompt tokens, "
          f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}", flush=True)

    runs = {}
    baseline, seconds = timed(run_baseline, loaded, prompts, args.max_new_tokens, eos)
    runs["baseline (model.generate, 1 at a time)"] = (baseline, seconds)
    print(f"baseline done in {seconds:.1f} s", flush=True)
    if not args.skip_hf_batched:
        runs["model.generate, batches of 8 in file order"] = timed(run_hf_batched, loaded, prompts, args.max_new_tokens, eos)
        print("hf-batched done", flush=True)
    runs[f"tunelab generate (batch {args.batch_size})"] = timed(run_tunelab, loaded, prompts, args.max_new_tokens, args.batch_size)

    base_rate = sum(map(len, baseline)) / runs["baseline (model.generate, 1 at a time)"][1]
    report = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "runs": {}}
    print("\n| run | seconds | new tokens | tokens/s | ratio | outputs differing from baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (outputs, seconds) in runs.items():
        tokens = sum(map(len, outputs))
        differing = [i for i, (a, b) in enumerate(zip(outputs, baseline)) if a != b]
        rate = tokens / seconds
        report["runs"][name] = {"seconds": seconds, "new_tokens": tokens, "tokens_per_s": rate,
                                "ratio": rate / base_rate, "differing": [examples[i].id for i in differing]}
        print(f"| {name} | {seconds:.1f} | {tokens} | {rate:.1f} | {rate / base_rate:.2f}x | {len(differing)} |")
    for name, (outputs, _) in runs.items():
        for i, (a, b) in enumerate(zip(outputs, baseline)):
            if a != b:
                split = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"\n[{name}] {examples[i].id} differs from token {split}:"
                      f"\n  baseline: {loaded.tokenizer.decode(b[split:split + 12])!r}"
                      f"\n  this run: {loaded.tokenizer.decode(a[split:split + 12])!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
