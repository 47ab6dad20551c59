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

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tunelab.alignment.policy_eval import PolicyEvaluation, check_hardest, prompt_rows, sample_responses
from tunelab.errors import TunelabError
from tunelab.files import write_jsonl
from tunelab.training.data import completion_row
from tunelab.training.engine import Trainer, TrainResult


def pick_best(scores: Sequence[float], n: int) -> list[int]:
    """For scores laid out as groups of n (a prompt's samples side by side), the index
    within each group of its highest score; a tie goes to the earlier sample."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores do not split into groups of {n}")
    return [max(range(n), key=lambda j: (scores[i + j], -j)) for i in range(0, len(scores), n)]


def best_and_worst(scores: Sequence[float], n: int) -> list[tuple[int, int] | None]:
    """For groups of n scores, the (highest, lowest) index within each group, or None when
    the whole group scores the same (no preference to learn). Ties go to the earlier sample."""
    if n < 2 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores do not split into groups of {n} (n >= 2)")
    pairs: list[tuple[int, int] | None] = []
    for i in range(0, len(scores), n):
        group = scores[i : i + n]
        best = max(range(n), key=lambda j: (group[j], -j))
        worst = min(range(n), key=lambda j: (group[j], j))
        pairs.append((best, worst) if group[best] > group[worst] else None)
    return pairs


def choose(prompts: Sequence[str], texts: Sequence[str], n: int, reward: Any) -> tuple[list[int], list[float]]:
    """Score ``texts`` (n per prompt, each prompt's side by side; ``prompts`` once each):
    (the best index within each group, every score)."""
    scores = score_groups(prompts, texts, n, reward)
    return pick_best(scores, n), scores


def score_groups(prompts: Sequence[str], texts: Sequence[str], n: int, reward: Any) -> list[float]:
    repeated = [p for p in prompts for _ in range(n)]
    return torch.as_tensor(reward(repeated, list(texts)), dtype=torch.float).tolist()


def sample_groups(trainer: Any, prompts: Sequence[dict[str, Any]]) -> tuple[list[list[int]], list[str], list[float], float]:
    """``ppo.group_size`` samples of each prompt row by a trainer's policy, scored by its
    reward: (response ids, texts, scores, seconds), each prompt's samples side by side."""
    settings, n = trainer.config.ppo, trainer.config.ppo.group_size
    started = time.perf_counter()
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        responses, texts = sample_responses(model, trainer.tokenizer, [r["ids"] for r in prompts for _ in range(n)],
                                            settings, max_new_tokens=settings.max_new_tokens, seed=trainer.config.seed,
                                            batch_size=max(16, n), progress=trainer.progress, desc=f"{n} samples per prompt")
        scores = score_groups([r["text"] for r in prompts], texts, n, trainer.reward)
    finally:
        model.train(was_training)
    return responses, texts, scores, time.perf_counter() - started


def made_once(path: Path, resume: bool, make: Callable[[], list[dict[str, Any]]], main: bool = True) -> list[dict[str, Any]]:
    """The rows ``make()`` returns, written to ``path`` (JSONL) by the main process; a
    resumed run reads them back instead, so it trains on the very samples the
    interrupted run drew."""
    if resume and path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = make()
    if main:
        write_jsonl(path, rows)
    return rows


class SampledBeforeTraining:
    """What the two stages that sample their training data before the first step share
    (rejection sampling, rollout DPO): the recipe's prompt rule, timed as training
    compute, and the sampling seconds carried in checkpoints (a resumed run reads its
    samples back, not their time)."""

    sampling_seconds = 0.0

    def choose_prompts(self, resume: bool) -> None:
        started = time.perf_counter()
        self.prompts = self.keep_hardest(self.prompts, resume)
        self.setup_seconds = time.perf_counter() - started  # then the sampling's: training compute (max_seconds)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"sampling_seconds": self.sampling_seconds}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.sampling_seconds = state.pop("sampling_seconds", 0.0)


class RejectionSamplingTrainer(SampledBeforeTraining, PolicyEvaluation, Trainer):
    """``stage: rejection-sampling``: best-of-n samples of the training prompts, then
    supervised fine-tuning on them through the engine's loop."""

    SAMPLES_FILE = "best_of_n.jsonl"

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True, reward: Any = None,
                 monitor: Any = None) -> None:
        if config.ppo.group_size < 2:
            raise TunelabError("stage rejection-sampling keeps the best of ppo.group_size samples: set it to 2 or more")
        check_hardest(config.ppo)
        super().__init__(config, loaded, progress=progress)
        self.set_scorers(reward, monitor)
        self.prompts = self.rows  # prompt rows until the samples replace them
        self.before: dict[str, Any] | None = None

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        return prompt_rows(self.config, self.builder, self.tokenizer, self.loaded.is_encoder_decoder, data, split, limit)

    def row_length(self, row: dict[str, Any]) -> int:
        return len(row["input_ids"]) + (len(row["labels"]) if self.loaded.is_encoder_decoder else 0)

    def evaluate(self) -> dict[str, float]:
        return {}  # the held-out evaluation of a policy generates: see PolicyEvaluation

    def sample(self) -> list[dict[str, Any]]:
        """n samples of each training prompt, the best kept (with every score)."""
        n = self.config.ppo.group_size
        responses, texts, scores, self.sampling_seconds = sample_groups(self, self.prompts)
        self.setup_seconds += self.sampling_seconds
        kept = []
        for i, (row, j) in enumerate(zip(self.prompts, pick_best(scores, n))):
            kept.append({"prompt": row["text"], "prompt_ids": row["ids"], "response": texts[i * n + j],
                         "response_ids": responses[i * n + j], "score": scores[i * n + j],
                         "scores": scores[i * n : (i + 1) * n]})
        return kept

    def train(self, resume: bool = False) -> TrainResult:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.SAMPLES_FILE
        self.evaluate_before(resume)
        self.choose_prompts(resume)
        kept = made_once(path, resume, self.sample, self.accelerator.is_main_process)
        self.rows = [completion_row(k["prompt_ids"], k["response_ids"], self.loaded.is_encoder_decoder) for k in kept]
        return super().train(resume)

    def on_train_end(self, result: TrainResult) -> TrainResult:
        return self.evaluate_after(result, sampling_seconds=round(self.sampling_seconds, 3))


__all__ = ["RejectionSamplingTrainer", "SampledBeforeTraining", "best_and_worst", "choose", "made_once", "pick_best", "sample_groups",
           "score_groups"]
