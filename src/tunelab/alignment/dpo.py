"""Direct preference optimisation (``stage: dpo``): the policy learns from (prompt, chosen,
rejected) pairs with no reward model (Rafailov et al., 2023); IPO (Azar et al., 2023) as
the alternative loss. Causal and seq2seq, any non-soft-prompt method (full, LoRA, ...).

The reference is the policy before training. By default its log-probabilities are
computed once, before the first step, and kept (one forward pass per pair instead of
one per pair per epoch, and no second copy of the weights). With
``dpo.precompute_reference: false`` the reference runs every step instead: the same
model with its adapter disabled for peft methods (LoRA, IA3), a frozen copy otherwise.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

import torch

from tunelab.alignment.losses import dpo_loss, token_logprobs
from tunelab.alignment.preferences import load_pairs
from tunelab.training.data import IGNORE_INDEX, collate
from tunelab.training.engine import Trainer
from tunelab.training.losses import positions_to_keep


def pair_row(tokenizer: Any, prompt: str, response: str, max_length: int, is_encoder_decoder: bool) -> dict[str, list[int]]:
    """Prompt -> response (+ end-of-sequence) in the fine-tuning row format: the response
    keeps its start (at most half the length), the prompt its end."""
    answer = tokenizer(response, add_special_tokens=False)["input_ids"][: max_length // 2 - 1] + [tokenizer.eos_token_id]
    prompt_ids = tokenizer(prompt)["input_ids"]
    if is_encoder_decoder:
        return {"input_ids": prompt_ids[-max_length:], "labels": answer}
    prompt_ids = prompt_ids[max(len(prompt_ids) - (max_length - len(answer)), 0):]
    return {"input_ids": prompt_ids + answer, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer}


def disable_dropout(model: Any) -> None:
    """Dropout off everywhere: nn.Dropout layers and the attention-probability dropout
    rates that attention modules keep as plain floats (T5, Llama)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout", "dropout_rate"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens, and how many there are.
    Decoder-only batches are left-padded: logits only for the response positions."""
    labels = batch["labels"]
    if is_encoder_decoder:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        targets = labels
    else:
        keep = positions_to_keep(labels)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=keep).logits[:, :-1]
        targets = labels[:, labels.shape[1] - keep + 1 :]
    mask = targets != IGNORE_INDEX
    logps = token_logprobs(logits, targets.clamp(min=0)) * mask
    return logps.sum(-1), mask.sum(-1)


class DPOTrainer(Trainer):
    evaluates_pairs = True  # eval_rows are held-out pairs (rollout-dpo's are prompts)

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True) -> None:
        super().__init__(config, loaded, progress=progress)
        if config.dpo.disable_dropout:
            disable_dropout(self.model)
        self.reference_model = None
        is_peft = hasattr(self.model, "disable_adapter")
        if not config.dpo.precompute_reference and not is_peft:
            # full fine-tuning and tunelab's own methods: a frozen copy of the start
            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    # -- data -------------------------------------------------------------------------------
    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        encoder_decoder, length = self.loaded.is_encoder_decoder, self.config.max_length
        return [{"chosen": pair_row(self.tokenizer, p.prompt, p.chosen, length, encoder_decoder),
                 "rejected": pair_row(self.tokenizer, p.prompt, p.rejected, length, encoder_decoder)}
                for p in load_pairs(data, split, limit)]

    def row_length(self, row: dict[str, Any]) -> int:
        return max(len(row["chosen"]["input_ids"]) + len(row["chosen"]["labels"]),
                   len(row["rejected"]["input_ids"]) + len(row["rejected"]["labels"]))

    def _batch(self, indices: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
        picked = [rows[i] for i in indices]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = collate([r["chosen"] for r in picked] + [r["rejected"] for r in picked], pad,
                        self.loaded.is_encoder_decoder, left_pad=not self.loaded.is_encoder_decoder)
        if "reference" in picked[0]:
            batch["reference"] = torch.tensor([r["reference"][0] for r in picked] + [r["reference"][1] for r in picked])
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # -- reference ----------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        if "reference" in batch:
            return batch["reference"]
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            if self.reference_model is not None:
                return sequence_logps(self.reference_model, batch, self.loaded.is_encoder_decoder)[0]
            with model.disable_adapter():
                return sequence_logps(model, batch, self.loaded.is_encoder_decoder)[0]
        finally:
            model.train(was_training)

    @torch.no_grad()
    def _precompute(self, rows: list[dict[str, Any]], desc: str) -> None:
        """The policy before its first update is the reference: score every pair with it,
        in batches of similar length (little padding to compute)."""
        from tqdm.auto import tqdm

        size = self.config.batch_size
        order = sorted(range(len(rows)), key=lambda i: self.row_length(rows[i]), reverse=True)
        self.model.eval()
        for start in tqdm(range(0, len(rows), size), desc=desc, unit="batch", disable=not self.progress):
            indices = order[start : start + size]
            values = sequence_logps(self.model, self._batch(indices, rows), self.loaded.is_encoder_decoder)[0].cpu().tolist()
            half = len(indices)
            for k, i in enumerate(indices):
                rows[i]["reference"] = (values[k], values[half + k])
        self.model.train()

    def train(self, resume: bool = False) -> Any:
        if self.config.dpo.precompute_reference:
            # before any update (and before --resume loads trained weights): the start is the reference
            print("tunelab train: computing reference log-probs once (dpo.precompute_reference)", file=sys.stderr)
            started = time.perf_counter()
            self._precompute(self.rows, "reference (train)")
            self.setup_seconds += time.perf_counter() - started  # the method's own compute (max_seconds)
            if self.evaluates_pairs:
                self._precompute(self.eval_rows, "reference (eval)")
        return super().train(resume)

    # -- loss -----------------------------------------------------------------------------------
    def _terms(self, batch: dict[str, Any]) -> Any:
        settings = self.config.dpo
        logps, lengths = sequence_logps(self.model, batch, self.loaded.is_encoder_decoder)
        reference = self.reference_logps(batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = reference.chunk(2)
        chosen_len, rejected_len = lengths.chunk(2)
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=settings.beta, loss_type=settings.loss_type,
                        label_smoothing=settings.label_smoothing, chosen_lengths=chosen_len, rejected_lengths=rejected_len)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        terms = self._terms(batch)
        self.step_metrics = _reward_stats(terms)
        return terms.losses.mean()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        losses, chosen, rejected = [], [], []
        for batch in self.eval_batches():
            terms = self._terms(batch)
            losses.append(terms.losses)
            chosen.append(terms.chosen_rewards)
            rejected.append(terms.rejected_rewards)
        self.model.train()
        from tunelab.alignment.losses import DPOTerms

        stats = _reward_stats(DPOTerms(torch.cat(losses), torch.cat(chosen), torch.cat(rejected)))
        return {"eval_loss": torch.cat(losses).mean().item(), **{f"eval_{k}": v for k, v in stats.items()}}

    def count_tokens(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())


def _reward_stats(terms: Any) -> dict[str, float]:
    """DPO's implicit rewards: accuracy = how often chosen out-scores rejected."""
    return {
        "reward_accuracy": (terms.chosen_rewards > terms.rejected_rewards).float().mean().item(),
        "reward_margin": (terms.chosen_rewards - terms.rejected_rewards).mean().item(),
        "chosen_reward": terms.chosen_rewards.mean().item(),
        "rejected_reward": terms.rejected_rewards.mean().item(),
    }


__all__ = ["DPOTrainer", "pair_row", "sequence_logps"]
