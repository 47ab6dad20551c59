"""LoRA fine-tuning throughput and memory: tunelab's engine vs transformers' Trainer + peft.

    python bench/training.py [--steps 6] [--batch-size 8]

One thing differs between the two sides: how a batch is run. Everything else is the same:

  * the model and set-up: SmolLM2-135M-Instruct, LoRA r16 alpha 32 dropout 0.05 on all
    seven projections, torch's AdamW (lr 1e-3, no weight decay), cosine with 5% warm-up,
    gradient clipping at 1.0, batch 8, seed 0, float32 on the CPU;
  * the examples, batch for batch: the first steps x batch-size DialogSum dev examples
    (prompt -> summary, loss on the summary only), tokenized once by tunelab's own
    function, for one epoch in tunelab's length-grouped order (shuffled, then sorted by
    length and cut into batches, the batches shuffled). That is the order `tunelab train`
    uses, so the tunelab side runs unmodified; the Trainer gets the same rows already in
    that order with `train_sampling_strategy="sequential"`. (A Trainer user can group by
    length too, `train_sampling_strategy="group_by_length"`, so the grouping is no longer
    counted as tunelab's gain.) Each side hashes the token ids of every batch it trains
    on; the parent stops unless the hashes and the token counts are equal;
  * the clock: from the start of the first step's forward pass to the end of the last
    step's optimizer step (model loaded, optimizer built, data tokenized before it on
    both sides): Trainer.compute_loss ... the callback's on_step_end of the last step,
    against tunelab's Trainer.loss ... count_tokens of the last step. Between them, both
    sides collate their later batches and log every step;
  * memory: the peak resident set size during that span (the kernel's high-water mark,
    reset when the clock starts), and the whole process's peak for reference;
  * each side in its own process.

What remains different is the technique compared: the Trainer with
`DataCollatorForSeq2Seq` pads on the right and computes the output layer (49,152
logits) at every position, as the peft docs show; tunelab pads on the left so the
completions end together and computes logits for the completion positions only.

Reports non-padding tokens per second, the peak memory during training, the first and
last step's loss of each (the first is the same up to float rounding: LoRA starts as
the identity), and the ratios. Writes runs/bench/training.json with the command and
settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
OPTIM = {"learning_rate": 1e-3, "weight_decay": 0.0, "scheduler": "cosine", "warmup_ratio": 0.05, "max_grad_norm": 1.0}
MAX_LENGTH, SEED = 512, 0


def _status_mb(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


class Meter:
    """What both sides record, the same way, inside the same span: the clock, the
    batches (token counts and a hash of their token ids), each step's loss, peak memory."""

    def __init__(self, steps: int) -> None:
        self.steps, self.batches = steps, 0
        self.started = self.seconds = None
        self.tokens = self.completion_tokens = 0
        self.hash = hashlib.sha256()
        self.losses: list[float] = []
        self.step_ends: list[float] = []
        self.memory: dict[str, float] = {}

    def start(self) -> None:
        if self.started is not None:
            return
        self.memory["peak_before_training_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.memory["rss_at_start_mb"] = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        self.started = time.perf_counter()

    def batch(self, batch: dict) -> None:
        mask, labels = batch["attention_mask"].bool(), batch["labels"]
        self.tokens += int(mask.sum())
        self.completion_tokens += int((labels != -100).sum())
        for ids, keep, row_labels in zip(batch["input_ids"], mask, labels):
            self.hash.update(ids[keep].numpy().tobytes())
            self.hash.update(row_labels[row_labels != -100].numpy().tobytes())
        self.batches += 1

    def loss(self, value: float) -> None:
        self.losses.append(value)

    def step_done(self) -> None:
        self.step_ends.append(time.perf_counter())
        if len(self.step_ends) == self.steps:
            self.stop()

    def stop(self) -> None:
        self.seconds = self.step_ends[-1] - self.started
        self.memory["peak_during_training_mb"] = _status_mb("VmHWM")
        self.memory["peak_process_mb"] = max(self.memory["peak_before_training_mb"], self.memory["peak_during_training_mb"])

    def result(self, **extra) -> dict:
        assert self.batches == self.steps and self.seconds is not None, (self.batches, self.steps, self.seconds)
        return {"seconds": self.seconds, "steps": self.batches, "tokens": self.tokens,
                "completion_tokens": self.completion_tokens, "batches_sha256": self.hash.hexdigest(),
                "first_loss": self.losses[0], "last_loss": self.losses[-1],
                "step_seconds": [b - a for a, b in zip([self.started, *self.step_ends], self.step_ends)],
                **self.memory, **extra}


def batch_order(rows: list[dict], batch_size: int) -> list[list[int]]:
    """tunelab's epoch-0 order of these rows: the batches both sides train on."""
    from tunelab.training.data import length_grouped_batches, row_length

    return length_grouped_batches([row_length(r) for r in rows], batch_size, SEED, 0)


def run_tunelab(steps: int, batch_size: int) -> dict:
    from tunelab.recipe import TrainConfig
    from tunelab.training.engine import Trainer
    from tunelab.training.methods.lora import LoraSettings

    meter = Meter(steps)

    class Metered(Trainer):
        def loss(self, batch):
            meter.start()
            meter.batch(batch)
            value = super().loss(batch)
            meter.loss(value.item())
            return value

        def count_tokens(self, batch):  # called after each step's optimizer step
            meter.step_done()
            return super().count_tokens(batch)

    config = TrainConfig(
        method="lora", data="dialogsum", split="dev", limit=steps * batch_size, max_steps=steps, epochs=1.0,
        batch_size=batch_size, grad_accum=1, max_length=MAX_LENGTH, seed=SEED, bf16=False, gradient_checkpointing=False,
        logging_steps=1, save_steps=0, eval_data=None, output_dir=tempfile.mkdtemp(prefix="bench-tunelab-"),
        lora=LoraSettings(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["target_modules"]),
        **OPTIM,
    )
    trainer = Metered(config, progress=False)
    batches = batch_order(trainer.rows, batch_size)
    assert len(batches) == steps and all(len(b) == batch_size for b in batches)
    result = trainer.train()
    return meter.result(own_clock_seconds=result.summary["train_seconds"])


def run_baseline(steps: int, batch_size: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

    from tunelab.data import load_examples
    from tunelab.models import load_model
    from tunelab.prompting import PromptBuilder, PromptTemplate
    from tunelab.training.data import tokenize_examples

    meter = Meter(steps)
    set_seed(SEED)
    loaded = load_model(MODEL, device="cpu")
    # the prompt builder `tunelab train` makes for a recipe's defaults: the rows are tunelab's
    builder = PromptBuilder(loaded.tokenizer, PromptTemplate(), use_chat_template=None, context_window=None,
                            is_encoder_decoder=False)
    rows, _ = tokenize_examples(load_examples("dialogsum", "dev", limit=steps * batch_size), builder, loaded.tokenizer,
                                is_encoder_decoder=False, max_length=MAX_LENGTH)
    batches = batch_order(rows, batch_size)
    assert len(batches) == steps and all(len(b) == batch_size for b in batches)
    ordered = [{**rows[i], "attention_mask": [1] * len(rows[i]["input_ids"])} for b in batches for i in b]
    loaded.tokenizer.padding_side = "right"
    model = get_peft_model(loaded.model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                    target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))

    class Metered(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            meter.start()
            meter.batch(inputs)
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            meter.loss((out[0] if return_outputs else out).item())
            return out

    class StopClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # after the optimizer step and zero_grad
            meter.step_done()

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=OPTIM["learning_rate"],
        weight_decay=OPTIM["weight_decay"], lr_scheduler_type=OPTIM["scheduler"],
        warmup_steps=int(OPTIM["warmup_ratio"] * steps), max_grad_norm=OPTIM["max_grad_norm"],
        optim="adamw_torch",  # torch.optim.AdamW, as tunelab builds it (the default here is the fused kernel)
        train_sampling_strategy="sequential", dataloader_drop_last=False, dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=SEED, bf16=False,
        remove_unused_columns=False, disable_tqdm=True, log_level="warning",
    )
    trainer = Metered(model=model, args=args, train_dataset=ordered, callbacks=[StopClock()],
                      data_collator=DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=-100))
    output = trainer.train()
    return meter.result(own_clock_seconds=output.metrics["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps = batches (default 6)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variant", choices=["tunelab", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/training.json"))
    args = parser.parse_args()
    if args.steps * args.batch_size > 500:
        parser.error("steps x batch-size must be at most 500 (the DialogSum dev examples: one epoch, no repeats)")
    if args.variant:  # child process: one variant, result as JSON on the last line
        runner = run_tunelab if args.variant == "tunelab" else run_baseline
        print(json.dumps(runner(args.steps, args.batch_size)))
        return

    import torch

    command = shlex.join([sys.executable, *sys.argv])
    print(command, flush=True)
    results = {}
    for variant in ("baseline", "tunelab"):
        print(f"running {variant} ({args.steps} steps of {args.batch_size}) ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                               "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    base, ours = results["baseline"], results["tunelab"]
    for key in ("batches_sha256", "tokens", "completion_tokens", "steps"):
        if base[key] != ours[key]:
            sys.exit(f"the two sides trained on different batches ({key}: {base[key]} vs {ours[key]}); not comparable")
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    print(f"\nboth trained on the same {ours['steps']} batches: {ours['tokens']} non-padding tokens, "
          f"{ours['completion_tokens']} of them completion tokens (sha256 {ours['batches_sha256'][:12]})")
    print("\n| run | seconds | of which step 1 | tokens/s | peak memory in training (MB) | process peak (MB) | first / last loss |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, label in (("baseline", "Trainer + peft"), ("tunelab", "tunelab train")):
        r = results[name]
        print(f"| {label} | {r['seconds']:.1f} | {r['step_seconds'][0]:.1f} | {r['tokens_per_s']:.1f} | {r['peak_during_training_mb']:.0f} | "
              f"{r['peak_process_mb']:.0f} | {r['first_loss']:.4f} / {r['last_loss']:.4f} |")
    speed = ours["tokens_per_s"] / base["tokens_per_s"]
    memory = ours["peak_during_training_mb"] / base["peak_during_training_mb"]
    print(f"\nthroughput ratio {speed:.2f}x, peak memory in training ratio {memory:.2f}x (tunelab / Trainer)")
    report = {
        "command": command,
        "settings": {"model": MODEL, "data": f"dialogsum dev, first {args.steps * args.batch_size} examples, "
                     "one epoch in tunelab's length-grouped order (seed 0, epoch 0), the same batches on both sides",
                     "steps": args.steps, "batch_size": args.batch_size, "max_length": MAX_LENGTH, "seed": SEED,
                     "lora": LORA, **OPTIM, "optimizer": "torch.optim.AdamW", "precision": "float32",
                     "clock": "start of the first step's forward pass to the end of the last optimizer step",
                     "memory": "peak RSS during that span (VmHWM reset at the start)",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine()},
        **results, "throughput_ratio": speed, "memory_ratio": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
