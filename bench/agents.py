"""Agent speed: the cost of grammar-constrained tool calls, and agent steps per second.

    python bench/agents.py [--problems 10] [--model smollm2-135m-instruct]

1. Constrained vs free decoding per tool call: for each of the first N GSM8K dev problems,
   the ReAct prompt (calculator + finish), one step generated under the step's JSON schema
   (llguidance), then — in another process — the same prompt decoded freely for exactly
   as many new tokens as the constrained step took (end of sequence suppressed), so both
   sides decode the same number of tokens from the same prompts with the same model,
   greedy, batch 1. Reported: seconds per call and per token for each, and the ratio.
2. Agent steps per second: ReAct (constrained, at most 4 replies) on the same problems,
   in its own process: replies (model steps) per second and problems per minute, with the
   share of steps that parsed.

Each part runs in its own process, one after the other; model loading is not counted.
Writes runs/bench/agents.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def load(args: argparse.Namespace):
    from tunelab.agents.tasks import AgentEvalSettings, load_rows
    from tunelab.models import load_for_inference

    loaded = load_for_inference(args.model, device="cpu")
    rows = load_rows(AgentEvalSettings(task="gsm8k", split="dev", limit=args.problems))
    return loaded, rows


def react_prompts(loaded, rows) -> list[list[int]]:
    from tunelab.agents.backends import render_chat
    from tunelab.agents.loops import react_instructions
    from tunelab.agents.tools import make_tools

    tools = list(make_tools(["calculator"]).values())
    prompts = []
    for row in rows:
        messages = [{"role": "system", "content": react_instructions(tools)}, {"role": "user", "content": row["question"]}]
        text, special = render_chat(loaded.tokenizer, messages)
        prompts.append(loaded.tokenizer(text, add_special_tokens=not special)["input_ids"])
    return prompts


def constrained_worker(args: argparse.Namespace) -> dict:
    from tunelab.agents.constrained import SchemaConstraint, json_grammar, vocab_size
    from tunelab.agents.loops import step_schema
    from tunelab.agents.tools import make_tools
    from tunelab.generation import GenerationSettings, generate_from_ids

    loaded, rows = load(args)
    grammar = json_grammar(step_schema(list(make_tools(["calculator"]).values())))
    SchemaConstraint(loaded.tokenizer, vocab_size(loaded.model), grammar)  # llguidance's tokenizer, built once
    calls = []
    for ids in react_prompts(loaded, rows):
        constraint = SchemaConstraint(loaded.tokenizer, vocab_size(loaded.model), grammar)
        started = time.perf_counter()
        out = generate_from_ids(loaded.model, loaded.tokenizer, [ids], GenerationSettings(max_new_tokens=600, batch_size=1),
                                progress=False, constraints=[constraint])[0]
        calls.append({"seconds": time.perf_counter() - started, "tokens": len(out.token_ids),
                      "parsed": _parses(loaded.tokenizer.decode(out.token_ids, skip_special_tokens=True))})
    return {"calls": calls}


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def free_worker(args: argparse.Namespace) -> dict:
    from tunelab.generation import GenerationSettings, generate_from_ids

    loaded, rows = load(args)
    lengths = json.loads(args.lengths)
    calls = []
    eos = [t for t in {loaded.tokenizer.eos_token_id, *(_ids(loaded.model.generation_config.eos_token_id))} if t is not None]
    for ids, length in zip(react_prompts(loaded, rows), lengths):
        no_eos = _NoEos(eos)  # free decoding for exactly `length` tokens: the end of sequence is masked out
        started = time.perf_counter()
        out = generate_from_ids(loaded.model, loaded.tokenizer, [ids], GenerationSettings(max_new_tokens=length, batch_size=1),
                                progress=False, constraints=[no_eos])[0]
        calls.append({"seconds": time.perf_counter() - started, "tokens": len(out.token_ids)})
    return {"calls": calls}


def _ids(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _NoEos:
    """The cheapest possible constraint (mask the end-of-sequence ids), so that the free
    side runs the same decoding path for the same number of tokens."""

    finished = False

    def __init__(self, eos: list[int]):
        self.eos = eos

    def mask_(self, logits) -> None:
        logits[self.eos] = float("-inf")

    def consume(self, token: int) -> None:
        pass


def react_worker(args: argparse.Namespace) -> dict:
    from tunelab.agents.backends import LocalBackend
    from tunelab.agents.loops import run_react
    from tunelab.agents.tools import make_tools

    loaded, rows = load(args)
    backend, tools = LocalBackend(loaded), make_tools(["calculator"])
    started, steps, failures = time.perf_counter(), 0, 0
    for row in rows:
        result = run_react(row["question"], tools, backend, max_steps=4, max_tokens=600)
        steps += len(result.steps)
        failures += result.parse_failures
    return {"seconds": time.perf_counter() - started, "steps": steps, "problems": len(rows), "parse_failures": failures}


WORKERS = {"constrained": constrained_worker, "free": free_worker, "react": react_worker}


def run_worker(name: str, args: argparse.Namespace, **extra: str) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--problems", str(args.problems)]
    for key, value in extra.items():
        command += [f"--{key}", value]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench/agents.py: {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=10, help="GSM8K dev problems (the first N)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/agents.json"))
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    constrained = run_worker("constrained", args)
    lengths = [c["tokens"] for c in constrained["calls"]]
    free = run_worker("free", args, lengths=json.dumps(lengths))
    react = run_worker("react", args)
    tokens = sum(lengths)
    c_seconds, f_seconds = (sum(c["seconds"] for c in side["calls"]) for side in (constrained, free))
    n = len(lengths)
    print(f"\n| decoding | calls | tokens | s per call | ms per token | parsed |\n|---|---:|---:|---:|---:|---:|")
    print(f"| free | {n} | {tokens} | {f_seconds / n:.2f} | {1000 * f_seconds / tokens:.1f} | – |")
    print(f"| constrained (llguidance) | {n} | {tokens} | {c_seconds / n:.2f} | {1000 * c_seconds / tokens:.1f} | "
          f"{sum(c['parsed'] for c in constrained['calls'])}/{n} |")
    print(f"constrained / free time per token: {c_seconds / f_seconds:.3f}x "
          f"({1000 * (c_seconds - f_seconds) / tokens:+.2f} ms per token)")
    print(f"ReAct: {react['steps']} steps for {react['problems']} problems in {react['seconds']:.0f} s: "
          f"{react['steps'] / react['seconds']:.2f} steps/s, {60 * react['problems'] / react['seconds']:.1f} problems/min, "
          f"{react['parse_failures']} parse failures")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "problems": n, "constrained": constrained, "free": free,
                                    "react": react, "ratio_per_token": c_seconds / f_seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
