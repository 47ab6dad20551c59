"""Best-of-n: sample n responses per prompt, keep the one the reward scores highest.

Two uses, one selection rule:
  * at inference, ``tunelab prompt --best-of N --reward DIR`` (jobs.py) answers with the
    best of N samples: the baseline every RL method must beat at equal compute;
  * as training data, ``stage: rejection-sampling`` samples the training prompts, keeps
    the best response of each and fine-tunes on them (rejection-sampling fine-tuning, as
    in Llama 2 and RAFT, Dong et al., 2023). The kept samples are written to
    ``best_of_n.jsonl`` and read back by a resumed run. Settings come from the ``ppo:``
    section (reward, group_size = n, temperature, top_k/top_p, max_new_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from tunelab.alignment.policy_eval import evaluate_policy, load_monitor, prompt_rows, sample_responses
from tunelab.data import Example
from tunelab.errors import TunelabError
from tunelab.files import write_json, write_jsonl
from tunelab.training.data import completion_row
from tunelab.training.engine import Trainer, TrainResult


def pick_best(scores: Sequence[float], n: int) -> list[int]:
    """For scores laid out as groups of n (a prompt's samples side by side), the index
    within each group of its highest score; a tie goes to the earlier sample."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores do not split into groups of {n}")
    return [max(range(n), key=lambda j: (scores[i + j], -j)) for i in range(0, len(scores), n)]


def choose(prompts: Sequence[str], texts: Sequence[str], n: int, reward: Any) -> tuple[list[int], list[float]]:
    """Score ``texts`` (n per prompt, each prompt's side by side; ``prompts`` once each):
    (the best index within each group, every score)."""
    repeated = [p for p in prompts for _ in range(n)]
    scores = torch.as_tensor(reward(repeated, list(texts)), dtype=torch.float).tolist()
    return pick_best(scores, n), scores


class RejectionSamplingTrainer(Trainer):
    """``stage: rejection-sampling``: best-of-n samples of the training prompts, then
    supervised fine-tuning on them through the engine's loop."""

    SAMPLES_FILE = "best_of_n.jsonl"

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True, reward: Any = None,
                 monitor: Any = None) -> None:
        if config.ppo.group_size < 2:
            raise TunelabError("stage rejection-sampling keeps the best of ppo.group_size samples: set it to 2 or more")
        super().__init__(config, loaded, progress=progress)
        if reward is None:
            from tunelab.alignment.reward import load_reward

            reward = load_reward(config.ppo.reward, output=config.ppo.reward_output, label=config.ppo.reward_label)
        self.reward = reward
        self.monitor = monitor if monitor is not None else load_monitor(config.ppo)
        self.prompts = self.rows  # prompt rows until the samples replace them
        self.before: dict[str, Any] | None = None
        self.sampling_seconds = 0.0

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        return prompt_rows(self.config, self.builder, self.tokenizer, self.loaded.is_encoder_decoder, data, split, limit)

    def row_length(self, row: dict[str, Any]) -> int:
        return len(row["input_ids"]) + (len(row["labels"]) if self.loaded.is_encoder_decoder else 0)

    def evaluate(self) -> dict[str, float]:
        return {}  # the held-out evaluation of a policy generates: see on_train_end

    def sample(self) -> list[dict[str, Any]]:
        """n samples of each training prompt, the best kept (with every score)."""
        settings, n = self.config.ppo, self.config.ppo.group_size
        started = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model).eval()
        responses, texts = sample_responses(model, self.tokenizer, [r["ids"] for r in self.prompts for _ in range(n)],
                                            settings, max_new_tokens=settings.max_new_tokens, seed=self.config.seed,
                                            batch_size=max(16, n), progress=self.progress, desc=f"best of {n}")
        best, scores = choose([r["text"] for r in self.prompts], texts, n, self.reward)
        model.train()
        self.sampling_seconds = time.perf_counter() - started
        kept = []
        for i, (row, j) in enumerate(zip(self.prompts, best)):
            kept.append({"prompt": row["text"], "prompt_ids": row["ids"], "response": texts[i * n + j],
                         "response_ids": responses[i * n + j], "score": scores[i * n + j],
                         "scores": scores[i * n : (i + 1) * n]})
        return kept

    def train(self, resume: bool = False) -> TrainResult:
        import json

        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.SAMPLES_FILE
        if resume and path.is_file():
            kept = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            self.before = json.loads((self.output_dir / "eval_before.json").read_text()) if self.eval_rows else None
        else:
            if self.eval_rows:
                self.before = self._evaluate_policy("before")
                write_json(self.output_dir / "eval_before.json", self.before)
            kept = self.sample()
            write_jsonl(path, kept)
        self.rows = [completion_row(k["prompt_ids"], k["response_ids"], self.loaded.is_encoder_decoder) for k in kept]
        return super().train(resume)

    def on_train_end(self, result: TrainResult) -> TrainResult:
        if self.accelerator.is_main_process:
            result.summary["sampling_seconds"] = round(self.sampling_seconds, 1)
            if self.before is not None:
                comparison = {"before": self.before, "after": self._evaluate_policy("after")}
                write_json(self.output_dir / "eval.json", comparison)
                result.summary["eval"] = comparison
            write_json(self.output_dir / "summary.json", result.summary)
        return result

    def _evaluate_policy(self, name: str) -> dict[str, Any]:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            return evaluate_policy(model, self.tokenizer, self.eval_rows, self.reward,
                                   max_new_tokens=self.config.ppo.max_new_tokens, output=self.output_dir / f"eval_{name}.jsonl",
                                   progress=self.progress, desc=f"eval ({name})", monitor=self.monitor)
        finally:
            model.train(was_training)


__all__ = ["RejectionSamplingTrainer", "choose", "pick_best"]
