"""Reward models and the rewards PPO reads.

* ``stage: reward`` — a pairwise reward model: a scalar head on a causal model (read at the
  last non-pad token) or a seq2seq model (read at the end-of-sequence token), trained with
  the Bradley-Terry loss on (prompt, chosen, rejected) pairs, full or LoRA.
* ``stage: classifier`` — a sequence classifier on labelled text (the course's detox
  set-up uses a hate-speech classifier; here one trained on the Davidson tweets).
* ``load_scorer(DIR)`` turns either into a reward: the scalar, or a chosen class's logit
  or probability; ``load_reward("module:function")`` takes a Python function instead.

Both trainers run on the fine-tuning engine (checkpoints, --resume, logs, plot). The
artifact is a Hugging Face folder (or a peft adapter with its head) plus
``tunelab_reward.json`` saying how to score with it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.alignment.losses import bradley_terry_loss
from tunelab.alignment.preferences import load_pairs
from tunelab.alignment.settings import ClassifierSettings
from tunelab.data.loading import BUILTIN_DATASETS, builtin_path, iter_records
from tunelab.errors import DataError, TunelabError
from tunelab.files import write_json
from tunelab.training.engine import Trainer

REWARD_META = "tunelab_reward.json"


# -- text -> token ids (one function, so training and scoring see the same input) -----------
def encode(tokenizer: Any, text: str, response: str | None, max_length: int, is_encoder_decoder: bool) -> list[int]:
    """Token ids of ``text`` (+ ``response``): the response keeps its start, the prompt
    its end, and seq2seq inputs end with exactly one end-of-sequence token (T5's
    classification head reads the hidden state there)."""
    eos = tokenizer.eos_token_id
    room = max_length - (1 if is_encoder_decoder else 0)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if response is not None:
        answer = tokenizer(response, add_special_tokens=False)["input_ids"][: max(room // 2, room - len(ids))]
        keep = room - len(answer)
        ids = ids[max(len(ids) - keep, 0):] + answer
    ids = ids[:room]
    if is_encoder_decoder:
        ids = [i for i in ids if i != eos] + [eos]
    return ids


def pad_right(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class _HeadTrainer(Trainer):
    """Shared by both trainers: a classification head instead of the LM head. Each
    subclass says, in ``meta()``, how its artifact scores text."""

    labels: list[str]

    def load_base(self) -> Any:
        from tunelab.models import load_model

        return load_model(self.config.model, device="cpu", classifier_labels=self.labels)

    def count_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def save_artifact(self, model: Any, folder: Path) -> None:
        super().save_artifact(model, folder)
        write_json(folder / REWARD_META, {**self.meta(), "base": self.config.model, "method": self.config.method,
                                          "max_length": self.config.max_length})


class RewardTrainer(_HeadTrainer):
    """Pairwise reward model: Bradley-Terry on (prompt + chosen, prompt + rejected)."""

    labels = ["reward"]

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        encoder_decoder, length = self.loaded.is_encoder_decoder, self.config.max_length
        return [
            {"chosen": encode(self.tokenizer, p.prompt, p.chosen, length, encoder_decoder),
             "rejected": encode(self.tokenizer, p.prompt, p.rejected, length, encoder_decoder),
             "margin": p.margin or 0.0}
            for p in load_pairs(data, split, limit)
        ]

    def row_length(self, row: dict[str, Any]) -> int:
        return max(len(row["chosen"]), len(row["rejected"]))

    def _batch(self, indices: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
        picked = [rows[i] for i in indices]
        batch = pad_right([r["chosen"] for r in picked] + [r["rejected"] for r in picked], _pad_id(self.tokenizer))
        batch["margin"] = torch.tensor([r["margin"] for r in picked])
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _rewards(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = self.logits(batch)[:, 0]
        return rewards.chunk(2)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        settings = self.config.reward
        chosen, rejected = self._rewards(batch)
        loss = bradley_terry_loss(chosen, rejected, batch["margin"] if settings.use_margin else None)
        if settings.center_coef:
            loss = loss + settings.center_coef * ((chosen + rejected) ** 2).mean()
        self.step_metrics = {"accuracy": (chosen > rejected).float().mean().item(),
                             "margin": (chosen - rejected).mean().item()}
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        chosen, rejected = [], []
        for batch in self.eval_batches():
            c, r = self._rewards(batch)
            chosen.append(c)
            rejected.append(r)
        self.model.train()
        return pair_metrics(torch.cat(chosen), torch.cat(rejected), prefix="eval_")

    def meta(self) -> dict[str, Any]:
        return {"kind": "reward", "labels": self.labels, "input": "prompt+response"}


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}loss": bradley_terry_loss(chosen, rejected).item(),
        f"{prefix}accuracy": (chosen > rejected).float().mean().item(),
        f"{prefix}margin": (chosen - rejected).mean().item(),
        f"{prefix}pairs": len(chosen),
    }


# -- classifier ---------------------------------------------------------------------------------
def load_labelled(source: str, split: str | None, settings: ClassifierSettings, limit: int | None) -> list[tuple[str, int, str]]:
    """(text, class index, where) rows; a missing field or unknown label names file and line."""
    path = builtin_path(source, split) if source in BUILTIN_DATASETS else Path(source)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    names = {name: i for i, name in enumerate(settings.labels)}
    rows = []
    for where, record in iter_records(path):
        for name in (settings.text_field, settings.label_field):
            if name not in record:
                raise DataError(f"{where}: no field '{name}' (fields: {', '.join(record)}); set classifier.text_field / label_field")
        raw = str(record[settings.label_field]).strip()
        label = names.get(raw, int(raw) if raw.isdigit() else -1)
        if not 0 <= label < len(settings.labels):
            raise DataError(f"{where}: label '{raw}' is not one of {settings.labels} or an index below {len(settings.labels)}")
        text = str(record[settings.text_field])
        if not text.strip():
            raise DataError(f"{where}: empty text")
        rows.append((text, label, where))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


class ClassifierTrainer(_HeadTrainer):
    """A sequence classifier (cross-entropy, optionally class-balanced)."""

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True) -> None:
        self.labels = list(config.classifier.labels)
        if config.classifier.reward_label not in self.labels:
            raise TunelabError(f"classifier.reward_label '{config.classifier.reward_label}' is not one of {self.labels}")
        super().__init__(config, loaded, progress=progress)
        counts = torch.bincount(torch.tensor([r["label"] for r in self.rows]), minlength=len(self.labels)).float()
        self.class_weights = (counts.sum() / (len(self.labels) * counts.clamp(min=1))) if config.classifier.balance else None

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        encoder_decoder = self.loaded.is_encoder_decoder
        return [{"input_ids": encode(self.tokenizer, text, None, self.config.max_length, encoder_decoder), "label": label}
                for text, label, _ in load_labelled(data, split, self.config.classifier, limit)]

    def row_length(self, row: dict[str, Any]) -> int:
        return len(row["input_ids"])

    def _batch(self, indices: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
        picked = [rows[i] for i in indices]
        batch = pad_right([r["input_ids"] for r in picked], _pad_id(self.tokenizer))
        batch["label"] = torch.tensor([r["label"] for r in picked])
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.logits(batch)
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        self.step_metrics = {"accuracy": (logits.argmax(-1) == batch["label"]).float().mean().item()}
        return F.cross_entropy(logits, batch["label"], weight=weights)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        predicted, gold = [], []
        for batch in self.eval_batches():
            predicted.append(self.logits(batch).argmax(-1))
            gold.append(batch["label"])
        self.model.train()
        return classification_metrics(torch.cat(predicted), torch.cat(gold), self.labels, prefix="eval_")

    def meta(self) -> dict[str, Any]:
        return {"kind": "classifier", "labels": self.labels, "reward_label": self.config.classifier.reward_label,
                "input": "response"}


def classification_metrics(predicted: torch.Tensor, gold: torch.Tensor, labels: list[str], prefix: str = "") -> dict[str, float]:
    metrics = {f"{prefix}accuracy": (predicted == gold).float().mean().item()}
    f1s = []  # macro F1 over the classes that occur (in gold or predictions)
    for index, name in enumerate(labels):
        tp = ((predicted == index) & (gold == index)).sum().item()
        precision = tp / max((predicted == index).sum().item(), 1)
        recall = tp / max((gold == index).sum().item(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[f"{prefix}f1_{name}"] = f1
        if (gold == index).any() or (predicted == index).any():
            f1s.append(f1)
    metrics[f"{prefix}macro_f1"] = sum(f1s) / max(len(f1s), 1)
    return metrics


# -- rewards for PPO and the CLI ----------------------------------------------------------------
RewardFn = Callable[[list[str], list[str]], torch.Tensor]  # (prompts, responses) -> [B] rewards


class ModelScorer:
    """Scores text with a trained reward model or classifier folder (``tunelab train`` output)."""

    def __init__(self, folder: str | Path, *, output: str = "logit", label: str | None = None,
                 device: str = "cpu", batch_size: int = 32, calibrated: bool = True) -> None:
        self.folder = Path(folder)
        self.meta, loaded = _load_head_model(self.folder, device)
        self.model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        self.is_encoder_decoder = loaded.is_encoder_decoder
        self.labels = self.meta["labels"]
        label = label or self.meta.get("reward_label") or self.labels[0]
        if label not in self.labels:
            raise TunelabError(f"{self.folder}: no class '{label}'; classes: {', '.join(self.labels)}")
        if output not in ("logit", "probability", "log_probability"):
            raise TunelabError(f"reward output must be 'logit', 'probability' or 'log_probability', not '{output}'")
        self.label_index, self.output, self.batch_size = self.labels.index(label), output, batch_size
        self.max_length = int(self.meta.get("max_length", 512))
        # set by `tunelab reward calibrate`; probabilities use it, raw logits do not
        self.temperature = float(self.meta.get("temperature", 1.0)) if calibrated else 1.0

    def _inputs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        if self.meta.get("input") == "response":
            return [encode(self.tokenizer, r, None, self.max_length, self.is_encoder_decoder) for r in responses]
        return [encode(self.tokenizer, p, r, self.max_length, self.is_encoder_decoder) for p, r in zip(prompts, responses)]

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """[B, classes] logits, in input order (batched by length)."""
        rows = self._inputs(prompts, responses)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.zeros(len(rows), len(self.labels))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = {k: v.to(device) for k, v in pad_right([rows[i] for i in chunk], _pad_id(self.tokenizer)).items()}
            out[chunk] = self.model(**batch).logits.float().cpu()
        return out

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.reward_from_logits(self.logits(prompts, responses))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, classes] class probabilities (calibrated when the folder has a temperature)."""
        return (logits / self.temperature).softmax(-1)

    def reward_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[B] rewards from ``logits()``'s output, so a caller that also wants the class
        probabilities runs the model once."""
        if self.output == "probability":
            return self.probabilities(logits)[:, self.label_index]
        if self.output == "log_probability":
            return (logits / self.temperature).log_softmax(-1)[:, self.label_index]
        return logits[:, self.label_index]


def _load_head_model(folder: Path, device: str) -> tuple[dict[str, Any], Any]:
    from tunelab.models import load_model

    meta_path = folder / REWARD_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (folder / "adapter_config.json").is_file():
        if not meta:
            raise TunelabError(f"{folder}: a LoRA reward model needs its {REWARD_META} (written by tunelab train)")
        from tunelab.models.adapters import load_artifact

        loaded = load_model(meta["base"], device=device, classifier_labels=meta["labels"])
        loaded.model = load_artifact(loaded.model, folder)
        return meta, loaded
    if not (folder / "config.json").is_file():
        raise TunelabError(f"{folder} is not a reward model or classifier folder (no config.json or adapter_config.json)")
    loaded = load_model(str(folder), device=device)
    if not type(loaded.model).__name__.endswith("ForSequenceClassification"):
        raise TunelabError(f"{folder} is a language model, not a reward model or classifier "
                           "(train one with a recipe whose stage is reward or classifier)")
    config = loaded.model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    meta = {"labels": labels, "input": "prompt+response" if len(labels) == 1 else "response", **meta}
    return meta, loaded


def load_reward(spec: str, *, output: str = "logit", label: str | None = None, device: str = "cpu") -> RewardFn:
    """A reward from a trained folder, or ``module:function`` taking (prompts, responses)
    and returning one number per response."""
    if ":" in spec and not Path(spec).exists():
        module_name, _, function_name = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise TunelabError(f"reward function '{spec}' not found: {exc}") from None

        def call(prompts: list[str], responses: list[str]) -> torch.Tensor:
            values = function(prompts, responses)
            if len(values) != len(responses):
                raise TunelabError(f"reward function '{spec}' returned {len(values)} values for {len(responses)} responses")
            return torch.as_tensor([float(v) for v in values])

        return call
    return ModelScorer(spec, output=output, label=label, device=device)


def evaluate_pairs(scorer: ModelScorer, source: str, split: str | None = None, limit: int | None = None,
                   buckets: int = 4) -> dict[str, Any]:
    """Held-out pair accuracy and mean margin of a reward model on a pairs file, with its
    calibration as a judge of which answer is preferred (ECE of sigma(margin), 10 bins)
    and accuracy by margin bucket (is it right more often where it is more confident?)."""
    from tunelab.evaluation.calibration import pair_accuracy_by_margin, pair_calibration_error

    pairs = load_pairs(source, split, limit)
    prompts = [p.prompt for p in pairs]
    chosen = scorer(prompts, [p.chosen for p in pairs])
    rejected = scorer(prompts, [p.rejected for p in pairs])
    return {**pair_metrics(chosen, rejected), "ece_10": pair_calibration_error(chosen, rejected),
            "by_margin": pair_accuracy_by_margin(chosen, rejected, buckets)}


def calibrate_classifier(scorer: ModelScorer, validation: Sequence[tuple[str, int, str]],
                         held_out: Sequence[tuple[str, int, str]]) -> dict[str, Any]:
    """Fit a temperature on ``validation`` (text, class, where) rows, save it in the
    scorer's folder, and report held-out calibration before and after, with per-class F1
    (unchanged by a temperature, which keeps every ranking). ``scorer`` must be uncalibrated."""
    from tunelab.evaluation.calibration import calibration_metrics, fit_temperature

    if len(scorer.labels) < 2:
        raise TunelabError(f"{scorer.folder}: a reward model has one output, nothing to calibrate (a classifier has classes)")
    if scorer.temperature != 1.0:
        raise TunelabError("calibrate with ModelScorer(..., calibrated=False): logits must be the raw ones")

    def logits_and_gold(rows: Sequence[tuple[str, int, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [text for text, _, _ in rows]
        return scorer.logits([""] * len(texts), texts), torch.tensor([label for _, label, _ in rows])

    fit_logits, fit_gold = logits_and_gold(validation)
    temperature = fit_temperature(fit_logits, fit_gold)
    logits, gold = logits_and_gold(held_out)
    report = {
        "temperature": temperature, "validation_rows": len(validation), "held_out_rows": len(held_out),
        "before": calibration_metrics(logits, gold), "after": calibration_metrics(logits, gold, temperature),
        "f1": classification_metrics(logits.argmax(-1), gold, scorer.labels),
    }
    meta_path = scorer.folder / REWARD_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    write_json(meta_path, {**meta, "temperature": temperature, "calibration": report})
    return report


def read_texts(path: Path) -> list[dict[str, str]]:
    """Texts to score: a .txt file (one per line) or rows with 'text'/'response' and an
    optional 'prompt'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.suffix == ".txt":
        return [{"prompt": "", "text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for where, record in iter_records(path):
        field_name = next((k for k in ("text", "response", "completion", "prediction") if k in record), None)
        if field_name is None:
            raise DataError(f"{where}: no 'text' (or 'response', 'completion', 'prediction') field; fields: {', '.join(record)}")
        rows.append({"prompt": str(record.get("prompt") or ""), "text": str(record[field_name])})
    if not rows:
        raise DataError(f"{path}: no texts")
    return rows
