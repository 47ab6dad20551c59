"""Batched generation against `model.generate`, one thing at a time.

    python bench/generation.py [--limit 64] [--batch-sizes 8 16] [--max-new-tokens 60]

The same zero-shot DialogSum test prompts (the default model's chat template), greedy,
at most the same number of new tokens, five ways, each in its own process (the model
loads there; only generation is on the clock, after a two-token warm-up):

  * baseline: the course notebook's loop, `model.generate` on one example at a time;
  * hf, batch B: `model.generate` on batches of B in file order, left-padded (what a
    user batching by hand gets), for B = 8 and 16;
  * tunelab, batch B: `tunelab.generation.generate` at the same B (length-sorted
    batches, per-chunk prefill, finished rows dropped from the batch and its KV cache).

Every variant stops on the same end-of-sequence set, the one tunelab stops on
(`tunelab.generation.batched.eos_token_ids`: the generation config's and the
tokenizer's), passed to `model.generate` as `eos_token_id` with the same `pad_token_id`;
every output is cut at its first token in that set the same way, so new tokens are
counted alike. Reports new tokens per second of each, its ratio to the baseline, the
ratio of tunelab to hf at equal batch size (the technique, not the batch size), and
the outputs that differ from the baseline (float near-ties under padding), each shown
from the first differing token. Writes runs/bench/generation.json with the command and
settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def _generate_kwargs(max_new_tokens: int, eos: set[int], pad_id: int) -> dict:
    """model.generate's settings, all explicit: greedy, the shared EOS set and pad id."""
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0,
            "eos_token_id": sorted(eos), "pad_token_id": pad_id}


def run_baseline(loaded, prompts, max_new_tokens, eos, pad_id, batch_size=1):
    import torch

    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            enc = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            out = loaded.model.generate(**enc, **_generate_kwargs(max_new_tokens, eos, pad_id))
            outputs.append(_until_eos(out[0, enc["input_ids"].shape[1] :].tolist(), eos))
    return outputs


def run_hf(loaded, prompts, max_new_tokens, eos, pad_id, batch_size):
    import torch

    tokenizer = loaded.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                out = loaded.model.generate(**enc, **_generate_kwargs(max_new_tokens, eos, pad_id))
                outputs.extend(_until_eos(row.tolist(), eos) for row in out[:, enc["input_ids"].shape[1] :])
    finally:
        tokenizer.padding_side = side
    return outputs


def run_tunelab(loaded, prompts, max_new_tokens, eos, pad_id, batch_size):
    from tunelab.generation import GenerationSettings, generate

    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0, stop=(),
                                  batch_size=batch_size)
    results = generate(loaded.model, loaded.tokenizer, prompts, settings, add_special_tokens=False, progress=False)
    # tunelab leaves the EOS out of token_ids already; the same cut as the others, for certain
    return [_until_eos(r.token_ids, eos) for r in results]


RUNNERS = {"baseline": run_baseline, "hf": run_hf, "tunelab": run_tunelab}


def run_variant(kind: str, batch_size: int, limit: int, max_new_tokens: int) -> dict:
    """One variant in this process: load, build the prompts, warm up, time the generation."""
    import torch

    from tunelab.data import load_examples
    from tunelab.generation.batched import eos_token_ids
    from tunelab.models import load_model
    from tunelab.prompting import PromptBuilder

    loaded = load_model(MODEL, device="cpu")
    builder = PromptBuilder(loaded.tokenizer, context_window=loaded.context_window)
    examples = load_examples("dialogsum", "test", limit=limit)
    prompts = [builder.build(e, []).text for e in examples]
    eos = eos_token_ids(loaded.model, loaded.tokenizer)  # the set tunelab's generate stops on
    tokenizer = loaded.tokenizer
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)  # tunelab's choice
    runner = RUNNERS[kind]
    runner(loaded, prompts[:2], 2, eos, pad_id, batch_size)  # warm-up, off the clock
    started = time.perf_counter()
    outputs = runner(loaded, prompts, max_new_tokens, eos, pad_id, batch_size)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "outputs": outputs, "ids": [e.id for e in examples], "eos_token_ids": sorted(eos),
            "pad_token_id": pad_id, "prompt_tokens": sum(builder.count_tokens(p) for p in prompts),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=64, help="DialogSum test dialogues (default 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16],
                        help="batch sizes run by both hf and tunelab (default 8 16)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/generation.json"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # child process: KIND:BATCH -> JSON file
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        kind, _, size = args.variant.partition(":")
        args.result.write_text(json.dumps(run_variant(kind, int(size), args.limit, args.max_new_tokens)))
        return

    import torch

    command = shlex.join([sys.executable, *sys.argv])
    print(command, flush=True)
    # equal batch sizes side by side, hf before tunelab in each pair
    variants = [("baseline", 1)] + [(kind, size) for size in args.batch_sizes for kind in ("hf", "tunelab")]
    names = {("baseline", 1): "baseline: model.generate, 1 at a time"}
    names.update({(k, b): f"model.generate, batches of {b} in file order" if k == "hf" else f"tunelab generate, batch {b}"
                  for k, b in variants[1:]})
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        for kind, size in variants:
            result = Path(tmp) / f"{kind}-{size}.json"
            print(f"running {names[kind, size]} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, "--variant", f"{kind}:{size}", "--result", str(result),
                                   "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{names[kind, size]} failed:\n{done.stderr[-3000:]}")
            runs[kind, size] = json.loads(result.read_text())
            print(f"  {runs[kind, size]['seconds']:.1f} s", flush=True)

    baseline = runs["baseline", 1]
    for key, run in runs.items():  # every child must have seen the same prompts, EOS set and pad id
        for field in ("ids", "eos_token_ids", "pad_token_id", "prompt_tokens"):
            if run[field] != baseline[field]:
                sys.exit(f"{names[key]}: {field} differs from the baseline's; not comparable")
    for run in runs.values():
        run["new_tokens"] = sum(map(len, run["outputs"]))
        run["tokens_per_s"] = run["new_tokens"] / run["seconds"]
        run["ended_by_eos"] = sum(len(o) < args.max_new_tokens for o in run["outputs"])
    base_rate = baseline["tokens_per_s"]
    print(f"\n{len(baseline['ids'])} prompts, {baseline['prompt_tokens']} prompt tokens, at most {args.max_new_tokens} "
          f"new tokens, greedy, EOS ids {baseline['eos_token_ids']}, pad id {baseline['pad_token_id']}, "
          f"torch threads {baseline['torch_threads']}, {platform.processor() or platform.machine()}")
    print("\n| run | seconds | new tokens | tokens/s | vs one at a time | tunelab vs hf, same batch | ended by EOS | outputs differing from baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    report_runs = {}
    for (kind, size), run in runs.items():
        differing = [i for i, (a, b) in enumerate(zip(run["outputs"], baseline["outputs"])) if a != b]
        vs_hf = run["tokens_per_s"] / runs["hf", size]["tokens_per_s"] if kind == "tunelab" else None
        report_runs[names[kind, size]] = {
            "kind": kind, "batch_size": size, "seconds": run["seconds"], "new_tokens": run["new_tokens"],
            "tokens_per_s": run["tokens_per_s"], "ratio_to_baseline": run["tokens_per_s"] / base_rate,
            "ratio_to_hf_same_batch": vs_hf, "ended_by_eos": run["ended_by_eos"],
            "differing": [baseline["ids"][i] for i in differing],
        }
        print(f"| {names[kind, size]} | {run['seconds']:.1f} | {run['new_tokens']} | {run['tokens_per_s']:.1f} | "
              f"{run['tokens_per_s'] / base_rate:.2f}x | {f'{vs_hf:.2f}x' if vs_hf else '—'} | "
              f"{run['ended_by_eos']} | {len(differing)} |")
    decode = None
    for key, run in runs.items():
        for i, (a, b) in enumerate(zip(run["outputs"], baseline["outputs"])):
            if a != b:
                if decode is None:
                    from transformers import AutoTokenizer

                    from tunelab.models import DEFAULT_MODEL, convert_gguf, default_gguf_path

                    decode = AutoTokenizer.from_pretrained(convert_gguf(default_gguf_path(), name=DEFAULT_MODEL)).decode
                split = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"\n[{names[key]}] {baseline['ids'][i]} differs from token {split}:"
                      f"\n  baseline: {decode(b[split:split + 12])!r}"
                      f"\n  this run: {decode(a[split:split + 12])!r}")
    report = {
        "command": command,
        "settings": {"model": MODEL, "data": "dialogsum test", "prompts": len(baseline["ids"]), "limit": args.limit,
                     "prompt_tokens": baseline["prompt_tokens"], "max_new_tokens": args.max_new_tokens,
                     "decoding": "greedy", "batch_sizes": args.batch_sizes, "eos_token_ids": baseline["eos_token_ids"],
                     "pad_token_id": baseline["pad_token_id"], "processes": "one per variant, model loaded there, "
                     "generation alone timed after a 2-prompt 2-token warm-up", "torch": torch.__version__,
                     "torch_threads": baseline["torch_threads"], "cpu": platform.processor() or platform.machine()},
        "runs": report_runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
