"""The training loop every method shares, on accelerate (one CPU to many GPUs/nodes).

    accelerate launch -m tunelab train RECIPE.yaml     # DDP/FSDP as accelerate is configured

Loss on completion tokens only; length-grouped batches; gradient accumulation; AdamW
with warm-up and linear/cosine decay; checkpoints written atomically; ``resume=True``
continues exactly (trainable weights, optimizer, scheduler, data order, RNG); a JSONL
log, a PNG loss curve and a progress bar with ETA; a non-finite loss stops the run and
leaves the last good checkpoint as it was.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunelab.data import load_examples
from tunelab.errors import TunelabError
from tunelab.files import write_json, write_text
from tunelab.prompting import PromptBuilder, PromptTemplate
from tunelab.training.data import collate, length_grouped_batches, row_length, tokenize_examples
from tunelab.training.losses import completion_loss, positions_to_keep
from tunelab.training.methods import METHODS

if TYPE_CHECKING:  # type only: the recipe sits above training and picks its trainer
    from tunelab.recipe import TrainConfig

TRAINABLE_FILE = "trainable.safetensors"


class TrainingError(TunelabError):
    """Training cannot go on (e.g. the loss became NaN); the message names what is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    artifact: Path
    steps: int
    summary: dict[str, Any]


def _prompt_builder(config: TrainConfig, loaded: Any, instruction: str | None = None) -> PromptBuilder:
    instruction = config.instruction if instruction is None else instruction
    template = PromptTemplate() if instruction is None else PromptTemplate(instruction=instruction, output_label="Answer:")
    if config.output_label is not None:
        template.output_label = config.output_label
    return PromptBuilder(
        loaded.tokenizer,
        template,
        use_chat_template={"auto": None, "on": True, "off": False}[config.chat_template],
        context_window=None,
        is_encoder_decoder=loaded.is_encoder_decoder,
    )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


class Trainer:
    """One run of one recipe. ``loaded`` lets tests and the demo pass a model in."""

    def __init__(self, config: TrainConfig, loaded: Any = None, *, progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.progress = progress
        self.step_metrics: dict[str, float] = {}  # extra per-step numbers a loss() reports
        # training work a stage does before its first step (rejection sampling's samples):
        # the training clock starts there, so max_seconds budgets every method alike
        self.setup_seconds = 0.0
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.grad_accum, mixed_precision="bf16" if config.bf16 else "no"
        )
        set_seed(config.seed)
        self.loaded = loaded if loaded is not None else self.load_base()
        self.tokenizer = self.loaded.tokenizer
        self.method = METHODS[config.method]
        self.model = self.prepare_model()
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        # Decoder-only models (but peft soft prompts, which add tokens inside forward)
        # train on left-padded batches with logits for the completion only.
        prompt_learning = bool(getattr(getattr(self.model, "active_peft_config", None), "is_prompt_learning", False))
        self.completion_logits_only = not self.loaded.is_encoder_decoder and not prompt_learning
        self.builder = _prompt_builder(config, self.loaded)
        self.rows = self.training_rows()
        self.eval_rows = self.evaluation_rows()
        self.model.train()

    # -- hooks the alignment trainers override ----------------------------------------------
    def load_base(self) -> Any:
        from tunelab.models import load_model

        config = self.config
        qlora = config.method == "lora" and config.lora.quantize_4bit
        return load_model(config.model, device="auto" if qlora else "cpu", quantize_4bit=qlora)

    def prepare_model(self) -> Any:
        settings = getattr(self.config, self.method.settings_field) if self.method.settings_field else None
        return self.method.prepare(self.loaded.model, settings, self.loaded.tokenizer)

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        """One dataset as training rows (each stage has its own row shape)."""
        return self._tokenize(data, split, limit)

    def training_rows(self) -> list[dict[str, Any]]:
        if self.config.mixture:
            return self._tokenize_mixture()
        return self.load_rows(self.config.data, self.config.split, self.config.limit)

    def evaluation_rows(self) -> list[dict[str, Any]]:
        config = self.config
        return self.load_rows(config.eval_data, config.eval_split, config.eval_limit) if config.eval_data else []

    def eval_batches(self) -> Any:
        """The held-out rows in order, batch by batch."""
        size = self.config.batch_size
        for start in range(0, len(self.eval_rows), size):
            yield self._batch(list(range(start, min(start + size, len(self.eval_rows)))), self.eval_rows)

    def row_length(self, row: dict[str, Any]) -> int:
        return row_length(row)

    def save_artifact(self, model: Any, folder: Path) -> None:
        self.method.save(model, folder, self.tokenizer)

    def count_tokens(self, batch: dict[str, Any]) -> int:
        """Trained-on tokens in a batch (for throughput): completion tokens here."""
        return int((batch["labels"] != -100).sum())

    # -- data -------------------------------------------------------------------------
    def _tokenize(self, data: str, split: str | None, limit: int | None) -> list[dict[str, list[int]]]:
        examples = load_examples(data, split, input_field=self.config.input_field, target_field=self.config.target_field, limit=limit)
        rows, truncated = tokenize_examples(
            examples, self.builder, self.tokenizer,
            is_encoder_decoder=self.loaded.is_encoder_decoder, max_length=self.config.max_length,
            tool_calls=self.config.tool_calls,
        )
        if truncated:
            print(f"tunelab train: {truncated} of {len(rows)} inputs from {data} shortened (their end) to fit max_length={self.config.max_length}", file=sys.stderr)
        return rows

    def _tokenize_mixture(self) -> list[dict[str, list[int]]]:
        from tunelab.training.mixture import load_mixture, parse_entries

        examples = load_mixture(parse_entries(self.config.mixture), self.config.seed)
        # each entry's template already holds its instruction
        builder = _prompt_builder(self.config, self.loaded, instruction="")
        rows, _ = tokenize_examples(examples, builder, self.tokenizer,
                                    is_encoder_decoder=self.loaded.is_encoder_decoder, max_length=self.config.max_length)
        return rows

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's share of the epoch's batches (each process gets as many)."""
        batches = length_grouped_batches([self.row_length(r) for r in self.rows], self.config.batch_size, self.config.seed, epoch)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
        return batches[:usable][rank::world] if world > 1 else batches

    def _batch(self, indices: list[int], rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = collate([rows[i] for i in indices], pad, self.loaded.is_encoder_decoder, left_pad=self.completion_logits_only,
                        decoder_start=getattr(self.model.config, "decoder_start_token_id", None))
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if not self.completion_logits_only:
            return self.model(**batch).loss
        keep = positions_to_keep(batch["labels"])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs, logits_to_keep=keep).logits
        return completion_loss(logits, batch["labels"][:, -keep:])

    # -- schedule -----------------------------------------------------------------------
    def total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        per_epoch = len(self._epoch_batches(0))
        return max(1, math.ceil(per_epoch * self.config.epochs / self.config.grad_accum))

    # -- checkpoints --------------------------------------------------------------------
    def _trainable(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write step-N into a temporary folder, rename it into place, then point
        ``latest`` at it: a crash at any moment leaves the previous checkpoint usable."""
        from safetensors.torch import save_file

        root = self.output_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        target = root / f"step-{state['step']}"
        tmp = root / f".tmp-step-{state['step']}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in self._trainable().items()}, str(tmp / TRAINABLE_FILE))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        write_json(tmp / "state.json", {**state, "python_rng": repr(random.getstate())})
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        write_text(root / "latest", target.name)
        kept = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def load_checkpoint(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        root = self.output_dir / "checkpoints"
        if not (root / "latest").is_file():
            raise TrainingError(f"--resume: no checkpoint in {root} (checkpoints are written every save_steps)")
        folder = root / (root / "latest").read_text().strip()
        tensors = load_file(str(folder / TRAINABLE_FILE))
        own = self._trainable()
        if set(tensors) != set(own):
            raise TrainingError(f"--resume: {folder} was written by a different method or model set-up")
        with torch.no_grad():
            for name, value in tensors.items():
                own[name].copy_(value)
        # our own files, but still loaded without unpickling arbitrary objects
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
        state = json.loads((folder / "state.json").read_text())
        import ast

        random.setstate(ast.literal_eval(state.pop("python_rng")))
        print(f"tunelab train: resumed from {folder} (step {state['step']})", file=sys.stderr)
        return state

    # -- logging ------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        from tunelab.training.plot import plot_losses

        plot_losses(self.output_dir / "metrics.jsonl", self.output_dir / "loss.png", title=f"{self.config.method} on {self.config.data}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses, weights = [], []
        for batch in self.eval_batches():
            tokens = int((batch["labels"] != -100).sum())
            losses.append(self.loss(batch).item() * tokens)
            weights.append(tokens)
        result = {"eval_loss": sum(losses) / max(sum(weights), 1)}
        if self.config.eval_rouge_limit:
            result.update(self._eval_rouge())
        self.model.train()
        return result

    def _eval_rouge(self) -> dict[str, float]:
        from tunelab.evaluation import rouge
        from tunelab.generation import GenerationSettings, generate

        examples = load_examples(self.config.eval_data, self.config.eval_split, limit=self.config.eval_rouge_limit,
                                 input_field=self.config.input_field, target_field=self.config.target_field)
        prompts = [self.builder.render(e, []) for e in examples]
        model = self.accelerator.unwrap_model(self.model)
        outputs = generate(model, self.tokenizer, prompts, GenerationSettings(max_new_tokens=60, batch_size=16),
                           add_special_tokens=self.builder.adds_special_tokens, progress=False)
        scores = rouge([o.text for o in outputs], [e.references for e in examples])
        return {f"eval_{k}": v for k, v in scores.items()}

    # -- the loop -----------------------------------------------------------------------
    # One loop for every stage. A stage changes what one optimizer step is
    # (``training_step``) and adds its own state to checkpoints (``checkpoint_state`` /
    # ``restore_checkpoint_state``); online RL (alignment/ppo.py) does a whole
    # rollout -> score -> update in one step.
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def prepare_for_training(self) -> None:
        """Wrap what trains for accelerate (after the optimizer exists)."""
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    def on_train_begin(self, resume: bool) -> None:
        """Before the first step (and after a resumed run's checkpoint is read)."""

    def training_step(self, state: dict[str, Any]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; moves ``state``'s data
        position and token count on, and returns what to log (``loss`` first)."""
        while True:
            batches = self._batches_of_epoch(state["epoch"])
            if state["batch"] >= len(batches):
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
                continue
            batch = self._batch(batches[state["batch"]], self.rows)
            with self.accelerator.accumulate(self.model):
                loss = self.loss(batch)
                if not torch.isfinite(loss):
                    self._stop_on_bad_loss(loss, state)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self._params, self.config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step() if self.accelerator.sync_gradients else None
                self.optimizer.zero_grad()
            state["tokens"] += self.count_tokens(batch)
            state["batch"] += 1
            if self.accelerator.sync_gradients:
                return {"loss": loss.item(), **self.step_metrics}

    def checkpoint_state(self) -> dict[str, Any]:
        """A stage's own state, saved in every checkpoint's state.json (JSON values)."""
        return {}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Take back what ``checkpoint_state`` saved (pop its keys from ``state``)."""

    def after_step(self, state: dict[str, Any], record: dict[str, float]) -> None:
        """After a step is logged, before its checkpoint (e.g. stop on a runaway KL)."""

    def progress_postfix(self, record: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}"}

    def on_train_end(self, result: TrainResult) -> TrainResult:
        return result

    def _batches_of_epoch(self, epoch: int) -> list[list[int]]:
        if getattr(self, "_epoch_cache", (None,))[0] != epoch:
            self._epoch_cache = (epoch, self._epoch_batches(epoch))
        return self._epoch_cache[1]

    def train(self, resume: bool = False) -> TrainResult:
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        total = self.total_steps_planned = self.total_steps()
        self._params = self.trainable_parameters()
        if not self._params:
            raise TrainingError(f"method '{config.method}' left no parameter trainable")
        self.optimizer = torch.optim.AdamW(self._params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(
            config.scheduler, self.optimizer, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total
        )
        self.prepare_for_training()
        # every process must start from the same clock, or one could stop before a step the others take
        state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "elapsed": self._agreed_clock(self.setup_seconds),
                 "eval_mark": 0}
        if resume:
            state = self.load_checkpoint()
            self.restore_checkpoint_state(state)
        else:
            (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            write_json(self.output_dir / "config.json", asdict(config))
        self.on_train_begin(resume)
        bar = tqdm(total=total, initial=state["step"], desc=f"{config.stage} {config.method}", unit="step",
                   disable=not (self.progress and self.accelerator.is_main_process))
        while not self._done(state, total):
            started = time.perf_counter()
            record = self.training_step(state)
            state["step"] += 1
            # the clock counts steps, not the evaluations and checkpoint writes between them
            state["elapsed"] = self._agreed_clock(state["elapsed"] + time.perf_counter() - started)
            self._after_step(state, record, bar)
        bar.close()
        if state["step"] < total:
            print(f"tunelab train: stopped after step {state['step']} of {total}: the training clock passed "
                  f"max_seconds={config.max_seconds:g} ({state['elapsed']:.0f} s)", file=sys.stderr)
        return self.on_train_end(self._finish(state))

    def _agreed_clock(self, elapsed: float) -> float:
        """Under several processes, the slowest one's clock: every process must stop (and
        evaluate) at the same step, or the others wait forever in a collective."""
        timed = self.config.max_seconds or self.config.eval_seconds
        if not timed or self.accelerator.num_processes == 1:
            return elapsed
        clock = torch.tensor([elapsed], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(clock, reduction="max").item())

    def _done(self, state: dict[str, Any], total: int) -> bool:
        # a budget ends training after a step, never before the first one (a stage's own
        # set-up, e.g. sampling, may use the budget up, and a run still yields a model)
        out_of_time = self.config.max_seconds > 0 and state["elapsed"] >= self.config.max_seconds and state["step"] > 0
        return state["step"] >= total or out_of_time

    def evaluate_during_training(self, state: dict[str, Any]) -> dict[str, float]:
        """The evaluation at eval_steps / eval_seconds (the final one is _finish's)."""
        return self.evaluate() if self.eval_rows else {}

    def _eval_due(self, state: dict[str, Any], last: bool) -> bool:
        config = self.config
        if last:  # the end of training has its own evaluation (_finish)
            return False
        mark = int(state["elapsed"] // config.eval_seconds) if config.eval_seconds else 0
        due = bool(config.eval_steps and state["step"] % config.eval_steps == 0) or mark > state.get("eval_mark", 0)
        if due:  # an evaluation by steps also counts as the one due by time
            state["eval_mark"] = max(mark, state.get("eval_mark", 0))
        return due

    def _after_step(self, state: dict[str, Any], record: dict[str, float], bar: Any) -> None:
        config = self.config
        bar.update(1)
        bar.set_postfix(self.progress_postfix(record))
        if state["step"] % config.logging_steps == 0:
            self.log({"step": state["step"], "epoch": state["epoch"], **record,
                      "lr": self.scheduler.get_last_lr()[0], "tokens": state["tokens"], "elapsed": round(state["elapsed"], 3)})
        if self._eval_due(state, last=self._done(state, self.total_steps_planned)):
            metrics = self.evaluate_during_training(state)
            if metrics:
                self.log({"step": state["step"], "elapsed": round(state["elapsed"], 3), **metrics})
        self.after_step(state, record)
        if config.save_steps and state["step"] % config.save_steps == 0 and self.accelerator.is_main_process:
            self.save_checkpoint({**state, **self.checkpoint_state()})
        self.accelerator.wait_for_everyone()

    def _stop_on_bad_loss(self, loss: torch.Tensor, state: dict[str, Any]) -> None:
        latest = self.output_dir / "checkpoints" / "latest"
        kept = f"the last good checkpoint is {latest.parent / latest.read_text().strip()}" if latest.is_file() else "no checkpoint was written yet"
        raise TrainingError(
            f"the loss became {loss.item()} at step {state['step'] + 1}; training stopped and {kept}. "
            "Try a lower learning_rate, max_grad_norm > 0, or check the data."
        )

    def _finish(self, state: dict[str, Any]) -> TrainResult:
        artifact = self.output_dir / "final"
        summary: dict[str, Any] = {}
        metrics = self.evaluate() if self.eval_rows else {}
        if metrics:  # (PPO's held-out evaluation generates, and is logged by PPO itself)
            self.log({"step": state["step"], **metrics})
            summary.update(metrics)
        if self.accelerator.is_main_process:
            shutil.rmtree(artifact, ignore_errors=True)
            self.save_artifact(self.accelerator.unwrap_model(self.model), artifact)
            model = self.accelerator.unwrap_model(self.model)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            summary.update({
                "method": self.config.method,
                "steps": state["step"],
                "trainable_params": trainable,
                "trainable_percent": 100 * trainable / total,
                "total_params": total,
                "train_seconds": round(state["elapsed"], 1),
                "completion_tokens": state["tokens"],
                "tokens_per_second": state["tokens"] / max(state["elapsed"], 1e-9),
                "peak_memory_mb": round(_peak_memory_mb(self.accelerator.device), 1),
                "artifact_mb": round(_folder_size_mb(artifact), 3),
            })
            write_json(self.output_dir / "summary.json", summary)
            self.plot()
        self.accelerator.wait_for_everyone()
        return TrainResult(self.output_dir, artifact, state["step"], summary)
