"""LoRA fine-tuning throughput and memory: tunelab's engine vs transformers' Trainer + peft.

    python bench/training.py [--steps 10] [--batch-size 8]

The same LoRA set-up (SmolLM2-135M-Instruct, r16 on all seven projections, lr 1e-3,
cosine, warm-up 5%, batch 8, seed 0) on the same tokenized DialogSum dev examples
(prompt -> summary, loss on the summary only), each in its own process so peak memory
is its own:

  * baseline: `transformers.Trainer` with `DataCollatorForSeq2Seq` (right padding to
    the longest in the batch), as a user following the peft docs would write it;
  * tunelab: `tunelab.training.engine` (length-grouped batches, left padding, logits
    for the completion only).

Reports non-padding tokens per second of training (forward + backward + step), peak
resident memory of the process, and their ratios. Writes runs/bench/training.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tunelab(steps: int, batch_size: int) -> dict:
    from tunelab.recipe import TrainConfig
    from tunelab.training.engine import Trainer

    config = TrainConfig(method="lora", data="dialogsum", split="dev", max_steps=steps, batch_size=batch_size,
                         learning_rate=1e-3, scheduler="cosine", warmup_ratio=0.05, max_length=512,
                         output_dir=tempfile.mkdtemp(prefix="bench-tunelab-"), seed=0)
    for key, value in LORA.items():
        setattr(config.lora, key, value)

    class EveryToken(Trainer):
        def count_tokens(self, batch):  # prompt and completion tokens, as the baseline counts them
            return int(batch["attention_mask"].sum())

    result = EveryToken(config, progress=False).train()
    return {"seconds": result.summary["train_seconds"], "tokens": result.summary["completion_tokens"], "peak_rss_mb": peak_rss_mb()}


def run_baseline(steps: int, batch_size: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunelab.data import load_examples
    from tunelab.models import load_model
    from tunelab.prompting import PromptBuilder
    from tunelab.training.data import tokenize_examples

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    builder = PromptBuilder(loaded.tokenizer)
    rows, _ = tokenize_examples(load_examples("dialogsum", "dev"), builder, loaded.tokenizer,
                                is_encoder_decoder=False, max_length=512)
    for row in rows:
        row["attention_mask"] = [1] * len(row["input_ids"])
    loaded.tokenizer.padding_side = "right"
    model = get_peft_model(loaded.model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                    target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    collator = DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=-100)
    seen = {"tokens": 0}

    def counting(features):
        out = collator(features)
        seen["tokens"] += int(out["attention_mask"].sum())
        return out

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"), per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=int(0.05 * steps), logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=counting)
    torch.manual_seed(0)
    started = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - started, "tokens": seen["tokens"], "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variant", choices=["tunelab", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/training.json"))
    args = parser.parse_args()
    if args.variant:  # child process: one variant, result as JSON on the last line
        runner = run_tunelab if args.variant == "tunelab" else run_baseline
        print(json.dumps(runner(args.steps, args.batch_size)))
        return
    results = {}
    for variant in ("baseline", "tunelab"):
        print(f"running {variant} ({args.steps} steps of {args.batch_size}) ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                               "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    base, ours = results["baseline"], results["tunelab"]
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    print("\n| run | seconds | non-padding tokens | tokens/s | peak memory (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("baseline", "Trainer + peft"), ("tunelab", "tunelab train")):
        r = results[name]
        print(f"| {label} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    speed = ours["tokens_per_s"] / base["tokens_per_s"]
    memory = ours["peak_rss_mb"] / base["peak_rss_mb"]
    print(f"\nthroughput ratio {speed:.2f}x, peak memory ratio {memory:.2f}x (tunelab / baseline)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "throughput_ratio": speed, "memory_ratio": memory}, indent=2) + "\n")


if __name__ == "__main__":
    main()
