"""The training recipe: one dataclass, every field documented, read from YAML; and the
trainer each stage runs.

A recipe file holds these fields (method settings nested under the method's name); the
command line overrides any of them with ``key=value`` (``lora.r=16``). An unknown key
is an error naming the nearest valid one.

Recipes sit above training/ and alignment/: they hold both layers' settings and pick
the trainer, and neither layer imports them. Reading and checking a recipe imports no
torch (the settings live in torch-free modules); the trainers load when a run starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.alignment.settings import ClassifierSettings, DPOSettings, PPOSettings, RewardSettings
from tunelab.errors import TunelabError
from tunelab.models.bottleneck import AdapterSettings
from tunelab.models.loading import DEFAULT_MODEL
from tunelab.training.methods import METHODS
from tunelab.training.methods.ia3 import IA3Settings
from tunelab.training.methods.lora import LoraSettings
from tunelab.training.methods.selective import SelectiveSettings
from tunelab.training.methods.soft_prompts import PrefixTuningSettings, PromptTuningSettings


class RecipeError(TunelabError):
    """A recipe file or override is malformed."""


ONLINE_RL = ("ppo", "rloo", "grpo", "rejection-sampling", "rollout-dpo")  # the stages that read ppo: (reward, sampling)
SAMPLED_GROUPS = ("rloo", "grpo", "rejection-sampling", "rollout-dpo")  # k samples per prompt (ppo.group_size)
STAGES = ("sft", "reward", "classifier", "ppo", "rloo", "grpo", "rejection-sampling", "rollout-dpo", "dpo")


@dataclass
class TrainConfig:
    stage: str = field(default="sft", metadata={"help": "sft (instruction fine-tuning), reward (pairwise reward model), classifier (e.g. toxicity), ppo, rloo, grpo (online RL with the ppo: settings), rejection-sampling (fine-tune on the best of ppo.group_size samples), rollout-dpo (DPO on the best and worst of ppo.group_size samples) or dpo."})
    method: str = field(default="lora", metadata={"help": "full, selective, lora, prompt-tuning, prefix-tuning, ia3 or adapter."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Base model: name, folder, .gguf file or hub id."})
    # data
    data: str = field(default="dialogsum", metadata={"help": "Training data: built-in dataset or file (prompt -> reference)."})
    split: str | None = field(default="dev", metadata={"help": "Split of a built-in dataset."})
    input_field: str | None = field(default=None, metadata={"help": "Input field of a data file (auto-detected)."})
    target_field: str | None = field(default=None, metadata={"help": "Target field of a data file (auto-detected); the first reference is the target."})
    limit: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    mixture: list[dict] = field(default_factory=list, metadata={"help": "Multitask training: datasets with their own templates and weights (see training/mixture.py); replaces data/split."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out data for periodic evaluation (default: none)."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of a built-in eval dataset."})
    eval_limit: int = field(default=32, metadata={"help": "Held-out rows used for eval loss."})
    eval_rouge_limit: int = field(default=0, metadata={"help": "Held-out rows also scored with ROUGE at each eval (generation is slow on CPU; 0 = off)."})
    # prompt format: the same as `tunelab prompt`, so training and evaluation see the same text
    instruction: str | None = field(default=None, metadata={"help": "Task instruction (default: the course's summarization prompt)."})
    output_label: str | None = field(default=None, metadata={"help": "Cue before the answer in plain prompts (default 'Summary:', or 'Answer:' with an instruction); '' with instruction '' and chat_template off: the input is a text to continue."})
    chat_template: str = field(default="auto", metadata={"help": "auto, on or off: wrap prompts in the model's chat template."})
    tool_calls: str = field(default="keep", metadata={"help": "Calculator calls in the targets (GSM8K's '<<48/2=24>>'): keep (trained on as text), tool (the model writes each call up to its '=', the calculator's result is left out of the loss, as `tunelab agent eval --mode calculator` runs it) or strip (calls removed: the same data without the tool)."})
    max_length: int = field(default=512, metadata={"help": "Longest training sequence in tokens; longer prompts are cut from the left."})
    # optimisation
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training data (fractions allowed)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; overrides epochs when > 0."})
    max_seconds: float = field(default=0.0, metadata={"help": "A training-time budget: stop after the step that takes the training clock past it (0 = none; at least one step runs). The clock counts training work only: steps, and a stage's own work before its first step (the sampling of rejection-sampling and rollout-dpo, DPO's reference pass, the search for ppo.hardest_prompts), not held-out evaluation or checkpoint writes. The learning-rate schedule still spans max_steps or epochs."})
    batch_size: int = field(default=8, metadata={"help": "Examples per micro-batch (per process)."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (LoRA papers: 1e-4 to 3e-4; full fine-tuning: ~2e-5)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps with linear warm-up."})
    scheduler: str = field(default="linear", metadata={"help": "linear, cosine or constant decay after warm-up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs that support it)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward: less memory, ~30% slower."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, data order and dropout."})
    # bookkeeping
    logging_steps: int = field(default=1, metadata={"help": "Log the training loss every N steps."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end, if eval_data is set)."})
    eval_seconds: float = field(default=0.0, metadata={"help": "Also evaluate each time the training clock passes another multiple of this many seconds (0 = off): a held-out curve against training time, e.g. to compare methods at equal compute."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = only the final artifact)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept; older ones are deleted after a newer one is safely written."})
    output_dir: str = field(default="runs/train", metadata={"help": "Where checkpoints, logs, the plot and the final artifact go."})
    # method settings
    selective: SelectiveSettings = field(default_factory=SelectiveSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    prefix_tuning: PrefixTuningSettings = field(default_factory=PrefixTuningSettings)
    ia3: IA3Settings = field(default_factory=IA3Settings)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    # stage settings
    reward: RewardSettings = field(default_factory=RewardSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)


def _nearest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(options)}"


def _set(target: Any, dotted: str, value: Any, where: str) -> None:
    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(target)]
    if head not in names:
        raise RecipeError(f"{where}: unknown recipe field '{dotted}'{_nearest(head, names)}")
    current = getattr(target, head)
    if dataclasses.is_dataclass(current):
        if rest:
            _set(current, rest, value, where)
        elif isinstance(value, dict):
            for key, inner in value.items():
                _set(current, str(key), inner, where)
        else:
            raise RecipeError(f"{where}: '{head}' holds settings; give a mapping or '{head}.<field>=...'")
        return
    if rest:
        raise RecipeError(f"{where}: '{head}' has no sub-fields")
    setattr(target, head, _coerce(dotted, current, value, where))


def _coerce(name: str, current: Any, value: Any, where: str) -> Any:
    """The value as the field's type (the type of its default). YAML 1.1 reads `5e-5`
    (no dot) as a string and `1` as an int, so a number field takes either; anything
    else of the wrong type is an error here rather than a TypeError deep in training."""
    if current is None or value is None or isinstance(current, (str, list, dict)):
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: '{name}' is true or false, not {value!r}")
    if isinstance(current, float) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if isinstance(current, int) and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
    kind = "a number" if isinstance(current, float) else "an integer"
    raise RecipeError(f"{where}: '{name}' is {kind}, not {value!r}")


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults) and apply key=value overrides."""
    import yaml

    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"no such recipe: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of field: value")
        for key, value in data.items():
            _set(config, str(key), value, str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"override '{item}' is not key=value")
        _set(config, key.strip(), yaml.safe_load(raw) if raw.strip() else None, "command line")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    if config.stage not in STAGES:
        raise RecipeError(f"unknown stage '{config.stage}'{_nearest(config.stage, list(STAGES))}; stages: {', '.join(STAGES)}")
    if config.method not in METHODS:
        raise RecipeError(f"unknown method '{config.method}'{_nearest(config.method, list(METHODS))}; methods: {', '.join(METHODS)}")
    if config.stage != "sft" and config.method in ("prompt-tuning", "prefix-tuning"):
        raise RecipeError(f"stage '{config.stage}' does not take soft prompts (method {config.method}); use lora, full, ia3, adapter or selective")
    checks = [
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.grad_accum >= 1, "grad_accum must be >= 1"),
        (config.learning_rate > 0, "learning_rate must be > 0"),
        (config.epochs > 0 or config.max_steps > 0, "set epochs > 0 or max_steps > 0"),
        (config.scheduler in ("linear", "cosine", "constant"), "scheduler must be linear, cosine or constant"),
        (config.chat_template in ("auto", "on", "off"), "chat_template must be auto, on or off"),
        (config.tool_calls in ("keep", "tool", "strip"), "tool_calls must be keep, tool or strip"),
        (config.max_length >= 8, "max_length must be >= 8"),
        (0 <= config.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (config.dpo.loss_type in ("sigmoid", "ipo"), "dpo.loss_type must be sigmoid or ipo"),
        (config.dpo.beta > 0, "dpo.beta must be > 0"),
        (config.ppo.reward_output in ("logit", "probability", "log_probability"), "ppo.reward_output must be logit, probability or log_probability"),
        (config.ppo.kl_estimator in ("k1", "k3"), "ppo.kl_estimator must be k1 or k3"),
        (config.stage not in ONLINE_RL or bool(config.ppo.reward), f"stage {config.stage} needs ppo.reward (a reward model or classifier folder, or module:function)"),
        (config.stage not in SAMPLED_GROUPS or config.ppo.group_size >= 2, f"stage {config.stage} needs ppo.group_size >= 2 (samples per prompt)"),
        (config.max_seconds >= 0 and config.eval_seconds >= 0, "max_seconds and eval_seconds must be >= 0"),
    ]
    problems = [message for ok, message in checks if not ok]
    if config.mixture and config.stage != "sft":
        problems.append(f"mixture is for fine-tuning (stage sft), not stage {config.stage}")
    if config.mixture:
        from tunelab.training.mixture import parse_entries

        try:
            parse_entries(config.mixture)
        except TunelabError as exc:
            problems.append(str(exc))
    if problems:
        raise RecipeError("bad recipe: " + "; ".join(problems))


def trainer_class(stage: str) -> type:
    """The trainer a recipe's ``stage`` names (each in its own file, imported when a run
    starts: they import torch)."""
    from tunelab.training.engine import Trainer

    if stage == "sft":
        return Trainer
    from tunelab.alignment.best_of_n import RejectionSamplingTrainer
    from tunelab.alignment.dpo import DPOTrainer
    from tunelab.alignment.ppo import PPOTrainer
    from tunelab.alignment.reward import ClassifierTrainer, RewardTrainer
    from tunelab.alignment.rollout_dpo import RolloutDPOTrainer

    return {"reward": RewardTrainer, "classifier": ClassifierTrainer, "ppo": PPOTrainer, "rloo": PPOTrainer,
            "grpo": PPOTrainer, "rejection-sampling": RejectionSamplingTrainer, "rollout-dpo": RolloutDPOTrainer,
            "dpo": DPOTrainer}[stage]


def train(config: TrainConfig, *, resume: bool = False, loaded: Any = None, progress: bool = True) -> Any:
    """Run a recipe: its stage's trainer, to the end (``resume``: from the last checkpoint).
    Returns the trainer's TrainResult (output folder, artifact, steps, summary)."""
    return trainer_class(config.stage)(config, loaded, progress=progress).train(resume=resume)
