"""Serving throughput: 32 concurrent clients, two adapters, batching against one at a time.

    python bench/serving.py [--clients 32] [--max-tokens 60] [--adapter A=PATH --adapter B=PATH]
                            [--max-batch-size 16] [--batch-wait-ms 5] [--dtype bfloat16]

The default model is served with two adapters (default: the DialogSum LoRA summarizer
and its detoxified PPO continuation, runs/dialogsum-lora/final and
runs/dialogsum-detox-ppo/final; two untrained LoRA adapters stand in when those have not
been trained). 32 clients at once, in a process of their own, each ask for the summary of
a DialogSum test dialogue (greedy, chat API), half through each adapter, on a real
uvicorn server over loopback:

  * batched: tunelab's batching (--max-batch-size, default 16; LoRA adapters mix in one);
  * one at a time: the same server with max_batch_size=1, every request alone.

Then the cost of switching adapters: the same 8 requests alternating A, B, A, B one at a
time through the views of one base, against one merged model per adapter (LoRA folded
into a copy of the base: no adapter compute, but a whole model per adapter in memory).
Writes runs/bench/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunelab.serving.app import ServerSettings as ServerSettingsDefaults
from tunelab.web import LiveServer  # a uvicorn server in a thread


def make_stand_in_adapters(model, folder: Path) -> list[str]:
    """Two LoRA adapters with random (untrained) weights, for a machine without trained ones."""
    import copy

    from peft import LoraConfig, get_peft_model

    specs = []
    for seed, name in ((1, "A"), (2, "B")):
        import torch

        torch.manual_seed(seed)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                            init_lora_weights=False)
        peft_model = get_peft_model(copy.deepcopy(model), config)
        for name_, parameter in peft_model.named_parameters():
            if "lora_B" in name_:
                parameter.data.mul_(0.01)  # small: outputs stay readable
        peft_model.save_pretrained(folder / name)
        specs.append(f"{name}={folder / name}")
    return specs


def run_clients_elsewhere(url: str, requests: list[dict], clients: int) -> dict:
    """The clients in a process of their own, as real ones would be: in the server's
    process their threads would compete with it for the interpreter lock."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_clients, url, requests, clients).result()


def run_clients(url: str, requests: list[dict], clients: int) -> dict:
    import httpx

    def one(body):
        started = time.perf_counter()
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=900)
        answer.raise_for_status()
        return time.perf_counter() - started, answer.json()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, requests))
    elapsed = time.perf_counter() - started
    tokens = sum(r[1]["usage"]["completion_tokens"] for r in results)
    latencies = sorted(r[0] for r in results)
    return {"seconds": round(elapsed, 2), "requests": len(requests), "completion_tokens": tokens,
            "requests_per_second": round(len(requests) / elapsed, 3), "tokens_per_second": round(tokens / elapsed, 1),
            "latency_p50_s": round(latencies[len(latencies) // 2], 2), "latency_max_s": round(latencies[-1], 2),
            "texts": [r[1]["choices"][0]["message"]["content"] for r in results]}


def prefill_bound(pool, tokenizer, requests: list[dict], names: list[str], batch_size: int, alone_seconds: float) -> dict:
    """How much of serving is reading the prompts. Each request's prompt is run through
    the model with one new token, one at a time and in the server's batches (adapters
    mixed as the server mixes them). Batched serving can be no faster than its prefill
    alone, so one-at-a-time seconds / batched prefill seconds bounds the speed-up even if
    decoding cost nothing."""
    from tunelab.generation import GenerationSettings
    from tunelab.generation.batched import generate_from_ids

    ids = [tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"] for r in requests]  # as the server does
    routes = [pool.route(r["model"]) for r in requests]
    if len({id(model) for model, _ in routes}) > 1:
        return {"skipped": "the adapters do not batch together (not all LoRA)"}
    one = GenerationSettings(max_new_tokens=1, batch_size=1)
    started = time.perf_counter()
    for prompt, (model, lora_name) in zip(ids, routes):
        model, adapter_names = pool.for_rows(model, [lora_name])
        generate_from_ids(model, tokenizer, [prompt], one, progress=False, adapter_names=adapter_names)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(ids), batch_size):
        part = routes[start : start + batch_size]
        model, adapter_names = pool.for_rows(part[0][0], [name for _, name in part])
        generate_from_ids(model, tokenizer, ids[start : start + batch_size], GenerationSettings(max_new_tokens=1, batch_size=batch_size),
                          progress=False, adapter_names=adapter_names)
    batched = time.perf_counter() - started
    return {"prompt_tokens": sum(len(p) for p in ids), "seconds_one_at_a_time": round(alone, 2), "seconds_batched": round(batched, 2),
            "share_of_one_at_a_time_serving": round(alone / alone_seconds, 2),
            "speedup_bound_if_decoding_were_free": round(alone_seconds / batched, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--adapter", action="append", default=[])
    parser.add_argument("--switch-requests", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=ServerSettingsDefaults.batch_wait_ms)
    parser.add_argument("--max-batch-size", type=int, default=ServerSettingsDefaults.max_batch_size)
    parser.add_argument("--dtype", default="auto", help="the served weights' dtype (auto = float32 on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serving.json"))
    args = parser.parse_args()

    import torch

    from tunelab.data.loading import load_examples
    from tunelab.generation import GenerationSettings
    from tunelab.generation.batched import generate_from_ids
    from tunelab.models import load_model
    from tunelab.serving.adapters import AdapterSet
    from tunelab.serving.app import ServerSettings, create_app

    loaded = load_model("smollm2-135m-instruct", dtype=args.dtype)
    specs = args.adapter or [f"{n}={p}" for n, p in (("A", "runs/dialogsum-lora/final"), ("B", "runs/dialogsum-detox-ppo/final"))]
    stand_in = not all(Path(s.split("=", 1)[1]).is_dir() for s in specs)
    if stand_in:
        specs = make_stand_in_adapters(loaded.model, args.out.parent / "stand-in-adapters")
    names = [s.split("=", 1)[0] for s in specs]
    examples = load_examples("dialogsum", "test", limit=args.clients)
    requests = [{"model": names[i % 2], "temperature": 0, "max_tokens": args.max_tokens,
                 "messages": [{"role": "user", "content": f"Summarize the following conversation.\n\n{e.input}"}]}
                for i, e in enumerate(examples)]

    results = {"model": "smollm2-135m-instruct", "adapters": specs, "stand_in_adapters": stand_in, "clients": args.clients,
               "max_tokens": args.max_tokens, "threads": torch.get_num_threads()}
    results.update(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, dtype=str(loaded.model.dtype))
    for mode, batch in (("batched", args.max_batch_size), ("one_at_a_time", 1)):
        pool = AdapterSet(loaded.model)
        for spec in specs:
            name, path = spec.split("=", 1)
            pool.add(name, path, trusted=True)
        server = LiveServer(create_app(loaded, pool, ServerSettings(max_batch_size=batch, max_tokens_limit=args.max_tokens,
                                                                    batch_wait_ms=args.batch_wait_ms)))
        run_clients(server.url, requests[:2], 2)  # warm-up
        engine = server.app.app.state.engine
        warm_up = len(engine.batch_sizes)
        results[mode] = run_clients_elsewhere(server.url, requests, args.clients)
        results[mode]["batch_sizes"] = list(engine.batch_sizes)[warm_up:]
        server.close()
        print(mode, {k: v for k, v in results[mode].items() if k != "texts"}, flush=True)
    results["same_texts"] = results["batched"].pop("texts") == results["one_at_a_time"].pop("texts")
    results["tokens_per_second_ratio"] = round(results["batched"]["tokens_per_second"] / results["one_at_a_time"]["tokens_per_second"], 2)
    results["requests_per_second_ratio"] = round(results["batched"]["requests_per_second"] / results["one_at_a_time"]["requests_per_second"], 2)

    # switching adapters per request (views of one base) against one merged model per adapter
    settings = GenerationSettings(max_new_tokens=args.max_tokens, batch_size=1)
    prompts = [loaded.tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
               for r in requests[: args.switch_requests]]
    pool = AdapterSet(loaded.model)
    for spec in specs:
        name, path = spec.split("=", 1)
        pool.add(name, path, trusted=True)
    from tunelab.models.adapters import load_artifact

    merged = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        copy_ = load_model("smollm2-135m-instruct", dtype=args.dtype).model
        adapted = load_artifact(copy_, path)
        merged[name] = adapted.merge_and_unload() if hasattr(adapted, "merge_and_unload") else adapted
    timings = {}
    def served_alone(name):  # as the server runs a batch of one adapter's requests
        model, lora_name = pool.route(name)
        return pool.for_rows(model, [lora_name])

    for label, pick in (("views", served_alone), ("merged", lambda n: (merged[n], None))):
        started, tokens = time.perf_counter(), 0
        for i, prompt in enumerate(prompts):
            model, adapter_names = pick(names[i % 2])
            ids = [loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
            out = generate_from_ids(model, loaded.tokenizer, ids, settings, progress=False, adapter_names=adapter_names)
            tokens += len(out[0].token_ids)
        timings[label] = {"seconds": round(time.perf_counter() - started, 2), "tokens": tokens}
    base_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    base_storage = {q.data_ptr() for q in loaded.model.parameters()}
    own = {p.data_ptr(): p.numel() * p.element_size() for n in names for p in pool.get(n).model.parameters()
           if p.data_ptr() not in base_storage}  # LoRA adapters share one view: count each tensor once
    results["switching"] = {
        "requests": len(prompts), **{f"{k}_seconds": v["seconds"] for k, v in timings.items()},
        "views_tokens_per_second": round(timings["views"]["tokens"] / timings["views"]["seconds"], 1),
        "merged_tokens_per_second": round(timings["merged"]["tokens"] / timings["merged"]["seconds"], 1),
        "time_ratio_views_over_merged": round(timings["views"]["seconds"] / timings["merged"]["seconds"], 2),
        "memory_mb_views": round((base_bytes + sum(own.values())) / 2**20, 1),
        "memory_mb_merged": round(len(names) * base_bytes / 2**20, 1),
    }
    print("switching", results["switching"], flush=True)
    results["prefill"] = prefill_bound(pool, loaded.tokenizer, requests, names, args.max_batch_size,
                                       results["one_at_a_time"]["seconds"])
    print("prefill", results["prefill"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"batched {results['batched']['tokens_per_second']} tok/s vs one at a time {results['one_at_a_time']['tokens_per_second']} "
          f"tok/s: {results['tokens_per_second_ratio']}x (goal >= 3x); same texts: {results['same_texts']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
