"""Online RL for causal and seq2seq policies: PPO with a KL penalty (``stage: ppo``),
RLOO (``stage: rloo``) and GRPO (``stage: grpo``).

Each step of the engine's loop (Ziegler et al., 2019; Stiennon et al., 2020):
  1. rollouts: sample responses to a batch of prompts with tunelab's batched generation
     (RLOO and GRPO: ``group_size`` samples of each prompt);
  2. scoring: a reward model, a classifier's class score, or a ``module:function``;
  3. advantages. PPO: per-token reward = -kl_coef * (log pi - log ref) plus the score at
     the last token, GAE on a scalar value head over the policy's last hidden state.
     RLOO (Ahmadian et al., 2024): the sequence's score minus kl_coef x its KL, less the
     mean of the prompt's other samples. GRPO (Shao et al., 2024): the score standardised
     within its group, with kl_coef x KL (k3) to the reference added to the loss. Neither
     has a value head;
  4. ``ppo_epochs`` passes of the clipped policy loss (+ PPO's value loss) over minibatches.

The reference is never a second copy for LoRA: it is the same base with the adapter
disabled, or, when PPO continues a trained adapter (``ppo.init_adapter``, e.g. the
DialogSum summarizer), a frozen second copy of that adapter only. Full fine-tuning
keeps a frozen copy of the model. The run stops with a message when the KL passes
``ppo.max_kl``. Checkpoints, --resume, logs and the plot come from the engine.
"""

from __future__ import annotations

import copy
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from tunelab.alignment import losses as L
from tunelab.errors import TunelabError
from tunelab.alignment.policy_eval import PolicyEvaluation, check_hardest, prompt_rows, sample_responses
from tunelab.models.adapters import PEFT_CONFIG, check_safetensors
from tunelab.training.engine import Trainer, TrainingError

VALUE_HEAD_FILE = "value_head.safetensors"
REFERENCE_ADAPTER = "reference"


class ValueHead(torch.nn.Module):
    """A scalar value per position, read from the policy's last hidden state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.summary.weight, std=1 / math.sqrt(hidden_size + 1))
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


# -- batches ----------------------------------------------------------------------------------
def rollout_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int, is_encoder_decoder: bool,
                  decoder_start: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors for scoring responses. Decoder-only: [left-padded prompt | right-padded
    response], so every response starts at the same column. Seq2seq: the prompt goes to
    the encoder and the response, shifted right, to the decoder."""
    size, width = len(prompts), max(len(r) for r in responses)
    response_ids = torch.full((size, width), pad_id, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.float)
    for i, r in enumerate(responses):
        response_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    prompt_width = max(len(p) for p in prompts)
    prompt_ids = torch.full((size, prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((size, prompt_width), dtype=torch.long)
    for i, p in enumerate(prompts):
        cols = slice(0, len(p)) if is_encoder_decoder else slice(prompt_width - len(p), prompt_width)
        prompt_ids[i, cols] = torch.tensor(p)
        prompt_mask[i, cols] = 1
    batch = {"responses": response_ids, "mask": mask}
    if is_encoder_decoder:
        start = torch.full((size, 1), decoder_start if decoder_start is not None else pad_id, dtype=torch.long)
        batch.update(input_ids=prompt_ids, attention_mask=prompt_mask,
                     decoder_input_ids=torch.cat([start, response_ids[:, :-1]], dim=1),
                     decoder_attention_mask=torch.cat([torch.ones(size, 1), mask[:, :-1]], dim=1).long())
    else:
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        batch.update(input_ids=torch.cat([prompt_ids, response_ids], dim=1), attention_mask=attention,
                     position_ids=(attention.cumsum(dim=1) - 1).clamp(min=0))
    return batch


def policy_outputs(model: Any, batch: dict[str, torch.Tensor], is_encoder_decoder: bool, *,
                   hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, R, V] predicting each response token, and the last hidden state at the
    same positions (for the value head) when asked."""
    width = batch["responses"].shape[1]
    if is_encoder_decoder:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch["decoder_attention_mask"],
                    output_hidden_states=hidden)
        return out.logits, (out.decoder_hidden_states[-1] if hidden else None)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                logits_to_keep=width + 1, output_hidden_states=hidden)
    states = out.hidden_states[-1][:, -(width + 1) : -1] if hidden else None
    return out.logits[:, :-1], states


def _select(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.index_select(0, rows) for k, v in batch.items()}


PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids")


def _prompt_mask(batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> torch.Tensor:
    """The attention mask's prompt columns (a decoder-only batch ends with the responses)."""
    response_width = 0 if is_encoder_decoder else batch["responses"].shape[1]
    return batch["attention_mask"][:, : batch["attention_mask"].shape[1] - response_width]


def trim_prompt_padding(batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Drop the prompt columns that are padding in every row (a minibatch's longest prompt
    is often much shorter than the rollout batch's): the same log-probs, less compute.
    Decoder-only prompts are left-padded, encoder inputs right-padded."""
    used = _prompt_mask(batch, is_encoder_decoder).any(dim=0).nonzero()
    if len(used) == 0:
        return batch
    keep = slice(0, int(used[-1]) + 1) if is_encoder_decoder else slice(int(used[0]), None)
    return {k: (v[:, keep] if k in PROMPT_KEYS else v) for k, v in batch.items()}


# -- the trainer --------------------------------------------------------------------------------
ESTIMATORS = {"ppo": "gae", "rloo": "rloo", "grpo": "grpo"}  # stage -> how advantages are estimated


class PPOTrainer(PolicyEvaluation, Trainer):
    """``stage: ppo`` (GAE with a value head), ``rloo`` and ``grpo`` (k samples per
    prompt, a group baseline, no value head). One step of the engine's loop is a whole
    rollout -> score -> update; the KL coefficient and reward statistics ride in its
    checkpoints."""

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True, reward: Any = None,
                 monitor: Any = None) -> None:
        settings = config.ppo
        self.estimator = ESTIMATORS[config.stage]
        self.group_size = 1 if self.estimator == "gae" else settings.group_size
        if settings.init_adapter and config.method != "lora":
            raise TunelabError("ppo.init_adapter continues a LoRA adapter: set method: lora")
        if settings.min_new_tokens > settings.max_new_tokens or settings.min_new_tokens < 1:
            raise TunelabError("ppo: need 1 <= min_new_tokens <= max_new_tokens")
        if self.estimator != "gae" and settings.group_size < 2:
            raise TunelabError(f"stage {config.stage} compares samples of the same prompt: set ppo.group_size >= 2")
        if settings.mini_batch_size > settings.rollout_batch_size * self.group_size:
            raise TunelabError("ppo: mini_batch_size must not exceed the rollouts per step (rollout_batch_size x group_size)")
        check_hardest(settings)
        if 0 < settings.hardest_prompts < settings.rollout_batch_size:
            raise TunelabError("ppo: hardest_prompts must be 0 (all prompts) or at least rollout_batch_size")
        super().__init__(config, loaded, progress=progress)
        self.set_scorers(reward, monitor)
        self.value_head = ValueHead(self.model.config.hidden_size).to(self.accelerator.device) if self.estimator == "gae" else None
        self.reference_model = None
        if config.method != "lora" and not hasattr(self.model, "disable_adapter"):
            self.reference_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)
        self.kl = (L.AdaptiveKLController(settings.kl_coef, settings.target_kl, settings.kl_horizon)
                   if settings.adaptive_kl else L.FixedKLController(settings.kl_coef))
        self.moments = L.RunningMoments()
        self.before: dict[str, Any] | None = None
        self.model.eval()  # no dropout: rollout and update log-probs must match (KL is 0 at the start)

    # -- set-up -------------------------------------------------------------------------------
    def prepare_model(self) -> Any:
        init = self.config.ppo.init_adapter
        if not init:
            return super().prepare_model()
        from peft import PeftModel

        if not (Path(init) / PEFT_CONFIG).is_file():
            raise TunelabError(f"ppo.init_adapter {init} is not a LoRA adapter folder; train one first, e.g. "
                               "`tunelab train recipes/dialogsum-lora.yaml`")
        check_safetensors(Path(init))  # peft would unpickle an adapter_model.bin
        model = PeftModel.from_pretrained(self.loaded.model, init, is_trainable=True)
        model.load_adapter(init, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
        return model

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        return prompt_rows(self.config, self.builder, self.tokenizer, self.loaded.is_encoder_decoder, data, split, limit)

    def _trainable(self) -> dict[str, torch.Tensor]:
        own = super()._trainable()
        if self.value_head is not None:
            head = self.accelerator.unwrap_model(self.value_head)
            own.update({f"value_head.{k}": v for k, v in head.named_parameters()})
        return own

    # -- reference --------------------------------------------------------------------------------
    @contextmanager
    def _as_reference(self) -> Iterator[Any]:
        model = self.accelerator.unwrap_model(self.model)
        if self.reference_model is not None:
            yield self.reference_model
        elif self.config.ppo.init_adapter:
            model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield model
            finally:
                model.set_adapter("default")
        else:
            with model.disable_adapter():
                yield model

    # -- one step ---------------------------------------------------------------------------------
    def rollout(self, rows: list[dict[str, Any]], step: int) -> tuple[list[list[int]], list[str], float]:
        settings = self.config.ppo
        length = random.Random(self.config.seed * 7919 + step).randint(settings.min_new_tokens, settings.max_new_tokens)
        started = time.perf_counter()
        responses, texts = sample_responses(self.accelerator.unwrap_model(self.model), self.tokenizer,
                                            [r["ids"] for r in rows], settings, max_new_tokens=length,
                                            seed=self.config.seed * 100_003 + step, batch_size=len(rows))
        return responses, texts, time.perf_counter() - started

    def _score(self, rows: list[dict[str, Any]], texts: list[str], responses: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw scores, the scores PPO optimises): the latter with the length penalty and,
        with normalize_reward, scaled by the running mean/std of every score so far (kept
        in checkpoints, so a resumed run normalises exactly as the first one would)."""
        raw = torch.as_tensor(self.reward([r["text"] for r in rows], texts), dtype=torch.float)
        scores = raw
        if self.config.ppo.length_penalty:
            scores = scores - self.config.ppo.length_penalty * torch.tensor([len(r) for r in responses], dtype=torch.float)
        if self.config.ppo.normalize_reward:
            self.moments.update(scores)
            scores = self.moments.normalise(scores).float()
        return raw, scores

    def _logprobs(self, model: Any, batch: dict[str, torch.Tensor], hidden: bool):
        logits, states = policy_outputs(model, batch, self.loaded.is_encoder_decoder, hidden=hidden)
        logits = logits.float() / self.config.ppo.temperature
        return logits, L.token_logprobs(logits, batch["responses"]), states

    def _by_length(self, batch: dict[str, torch.Tensor], compute) -> tuple[torch.Tensor, ...]:
        """``compute(part)`` over minibatch-sized parts of similar prompt length, each with
        its padding trimmed; the results are put back in the batch's row order."""
        order = _prompt_mask(batch, self.loaded.is_encoder_decoder).sum(dim=1).argsort(descending=True, stable=True)
        size = self.config.ppo.mini_batch_size
        parts = [compute(trim_prompt_padding(_select(batch, rows), self.loaded.is_encoder_decoder))
                 for rows in order.split(size)]
        inverse = order.argsort()
        return tuple(torch.cat(column).index_select(0, inverse) for column in zip(*parts))

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                   values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(per-token advantages, value targets or None, per-token rewards) by estimator:
        gae: the KL penalty per token, the score at the last token, GAE on the value head;
        rloo: the sequence's score minus kl_coef x its KL, less the other samples' mean;
        grpo: the score standardised within its group (the KL goes into the loss)."""
        settings = self.config.ppo
        if self.estimator == "gae":
            rewards = L.token_rewards(scores.to(mask.device), kl, mask, self.kl.value)
            advantages, returns = L.gae(rewards, values, mask, settings.gamma, settings.lam)
            return L.masked_whiten(advantages, mask), returns, rewards
        scores = scores.to(mask.device)
        if self.estimator == "rloo":
            sequence = scores - self.kl.value * kl.sum(dim=1)
            per_sequence = L.rloo_advantages(sequence, self.group_size)
        else:
            sequence = scores
            per_sequence = L.grpo_advantages(scores, self.group_size)
        rewards = torch.zeros_like(mask)
        rewards[torch.arange(len(mask)), (mask.sum(dim=1).long() - 1).clamp(min=0)] = sequence
        return per_sequence.unsqueeze(1) * mask, None, rewards

    @torch.no_grad()
    def _prepare_update(self, batch: dict[str, torch.Tensor], scores: torch.Tensor) -> dict[str, torch.Tensor]:
        settings, mask, hidden = self.config.ppo, batch["mask"], self.value_head is not None

        def policy(part):
            _, logprobs, states = self._logprobs(self.model, part, hidden=hidden)
            return (logprobs, self.value_head(states)) if hidden else (logprobs,)

        old = self._by_length(batch, policy)
        old_logprobs = old[0]
        old_values = old[1] * mask if hidden else None
        with self._as_reference() as reference:
            (ref_logprobs,) = self._by_length(batch, lambda part: (self._logprobs(reference, part, hidden=False)[1],))
        kl = L.kl_per_token(old_logprobs, ref_logprobs, settings.kl_estimator) * mask
        advantages, returns, rewards = self.advantages(scores, kl, mask, old_values)
        data = {**batch, "old_logprobs": old_logprobs * mask, "advantages": advantages, "kl": kl, "rewards": rewards}
        if hidden:
            data.update(old_values=old_values, returns=returns)
        if self.estimator == "grpo":
            data["ref_logprobs"] = ref_logprobs * mask
        return data

    def _minibatch_loss(self, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        settings, mask = self.config.ppo, part["mask"]
        hidden = self.value_head is not None
        logits, logprobs, states = self._logprobs(self.model, part, hidden=hidden)
        policy = L.ppo_policy_loss(logprobs, part["old_logprobs"], part["advantages"], mask, settings.clip_range)
        loss, stats = policy.loss, {"policy_loss": policy.loss, "clip_fraction": policy.clip_fraction, "approx_kl": policy.approx_kl}
        if hidden:
            value_loss, value_clip = L.ppo_value_loss(self.value_head(states), part["old_values"], part["returns"], mask,
                                                      settings.clip_range_value)
            loss = loss + settings.vf_coef * value_loss
            stats.update(value_loss=value_loss, value_clip_fraction=value_clip)
        if self.estimator == "grpo":  # GRPO's KL to the reference, in the loss (k3: non-negative per token)
            kl_loss = L.masked_mean(L.kl_per_token(logprobs, part["ref_logprobs"], "k3"), mask)
            loss = loss + self.kl.value * kl_loss
            stats["kl_loss"] = kl_loss
        with torch.no_grad():
            stats["entropy"] = L.masked_mean(L.entropy_from_logits(logits), mask)
        return loss, stats

    def _update(self, data: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        settings = self.config.ppo
        size = data["mask"].shape[0]
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + step)  # minibatch order, replayable
        for _ in range(settings.ppo_epochs):
            order = torch.randperm(size, generator=generator)
            for start in range(0, size, settings.mini_batch_size):
                part = _select(data, order[start : start + settings.mini_batch_size].to(data["mask"].device))
                loss, terms = self._minibatch_loss(trim_prompt_padding(part, self.loaded.is_encoder_decoder))
                if not torch.isfinite(loss):
                    raise TrainingError(f"the {self.config.stage} loss became {loss.item()}; lower learning_rate or check the reward")
                self.accelerator.backward(loss)
                if self.config.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self._params, self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                for key, value in terms.items():
                    stats.setdefault(key, []).append(float(value.detach()))
        self.scheduler.step()
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def ppo_step(self, rows: list[dict[str, Any]], step: int) -> dict[str, float]:
        """One rollout -> score -> update on ``rows`` (each prompt group_size times)."""
        responses, texts, generation_seconds = self.rollout(rows, step)
        started = time.perf_counter()
        raw_scores, scores = self._score(rows, texts, responses)
        scoring_seconds = time.perf_counter() - started
        started = time.perf_counter()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = rollout_batch([r["ids"] for r in rows], responses, pad, self.loaded.is_encoder_decoder,
                              getattr(self.loaded.model.config, "decoder_start_token_id", None))
        data = self._prepare_update({k: v.to(self.accelerator.device) for k, v in batch.items()}, scores)
        update = self._update(data, step)
        mask = data["mask"]
        sequence_kl = (data["kl"]).sum(-1)
        record = {
            "score": raw_scores.mean().item(), "score_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
            "reward": scores.mean().item(), "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl": sequence_kl.mean().item(), "kl_coef": self.kl.value,
            "non_score_reward": (-self.kl.value * sequence_kl).mean().item(),
            **update,
            "response_length": mask.sum(-1).mean().item(),
            "generation_seconds": round(generation_seconds, 2), "scoring_seconds": round(scoring_seconds, 2),
            "update_seconds": round(time.perf_counter() - started, 2),
        }
        self.kl.update(record["kl"], len(rows))
        return record

    # -- the engine's hooks ---------------------------------------------------------------------
    def total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        per_epoch = max(1, len(self.rows) // self.config.ppo.rollout_batch_size)
        return max(1, math.ceil(per_epoch * self.config.epochs))

    def _step_rows(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        size = self.config.ppo.rollout_batch_size
        if state["batch"] + size > len(self.rows):
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
        order = list(range(len(self.rows)))
        random.Random(self.config.seed * 100_003 + state["epoch"]).shuffle(order)
        picked = order[state["batch"] : state["batch"] + size]
        state["batch"] += size
        return [self.rows[i] for i in picked for _ in range(self.group_size)]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        head = list(self.value_head.parameters()) if self.value_head is not None else []
        return super().trainable_parameters() + head

    def prepare_for_training(self) -> None:
        if self.value_head is None:
            return super().prepare_for_training()
        # the value head goes through accelerate too, so its gradients are averaged across processes
        self.model, self.value_head, self.optimizer = self.accelerator.prepare(self.model, self.value_head, self.optimizer)

    def train(self, resume: bool = False) -> Any:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.rows = self.keep_hardest(self.rows, resume)  # before the engine counts steps: it may shrink the prompts
        self.setup_seconds = time.perf_counter() - started  # part of training's compute (max_seconds)
        if len(self.rows) < self.config.ppo.rollout_batch_size:
            raise TunelabError(f"{self.config.stage}: {len(self.rows)} prompts, fewer than rollout_batch_size={self.config.ppo.rollout_batch_size}")
        return super().train(resume)

    def on_train_begin(self, resume: bool) -> None:
        self.evaluate_before(resume)

    def training_step(self, state: dict[str, Any]) -> dict[str, float]:
        rows = self._step_rows(state)
        record = self.ppo_step(rows, state["step"])
        state["tokens"] += int(record["response_length"] * len(rows))
        return record

    def checkpoint_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl.value, "reward_moments": self.moments.state_dict()}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.kl.value = state.pop("kl_coef")
        self.moments.load_state_dict(state.pop("reward_moments"))

    def progress_postfix(self, record: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{record['reward']:.3f}", "kl": f"{record['kl']:.2f}"}

    def after_step(self, state: dict[str, Any], record: dict[str, float]) -> None:
        if record["kl"] > self.config.ppo.max_kl:
            self._stop_on_kl(record["kl"], state)

    def on_train_end(self, result: Any) -> Any:
        return self.evaluate_after(result)

    def _stop_on_kl(self, kl: float, state: dict[str, Any]) -> None:
        latest = self.output_dir / "checkpoints" / "latest"
        kept = f"the last good checkpoint is {latest.parent / latest.read_text().strip()}" if latest.is_file() else "no checkpoint was written yet"
        raise TrainingError(
            f"the KL to the reference reached {kl:.2f} nats at step {state['step']}, past ppo.max_kl={self.config.ppo.max_kl}: "
            f"the policy is running away from the reference (reward hacking?); training stopped and {kept}. "
            "Raise ppo.kl_coef, lower learning_rate, or turn on ppo.adaptive_kl."
        )

    def evaluate(self) -> dict[str, float]:
        return {}  # the held-out evaluation of a policy generates: see PolicyEvaluation

    def save_artifact(self, model: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.config.ppo.init_adapter and REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
            model.save_pretrained(folder, selected_adapters=["default"])
            self.tokenizer.save_pretrained(folder)
        else:
            super().save_artifact(model, folder)
        if self.value_head is not None:
            head = self.accelerator.unwrap_model(self.value_head)
            save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(folder / VALUE_HEAD_FILE))

    def plot(self) -> None:
        from tunelab.training.plot import plot_series

        last = "value_loss" if self.value_head is not None else "approx_kl"
        plot_series(self.output_dir / "metrics.jsonl", self.output_dir / f"{self.config.stage}.png",
                    ["reward", "kl", "entropy", last], title=f"{self.config.stage.upper()} on {self.config.data}")


__all__ = ["ESTIMATORS", "PPOTrainer", "ValueHead", "policy_outputs", "rollout_batch", "trim_prompt_padding"]
