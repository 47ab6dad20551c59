"""``stage: rollout-dpo``: DPO on preference pairs made from the policy's own samples.

Each training prompt gets ``ppo.group_size`` samples from the policy (the ``ppo:``
sampling settings), the run's reward scores them, and the best and the worst of each
prompt become a pair (a prompt whose samples all score the same gives none). DPO then
trains on those pairs with the policy before training as its reference, like ``stage:
dpo``. It is the offline counterpart of RLOO: the same samples and reward, a
preference loss instead of a policy gradient, and no generation once the pairs exist
(one round of the "sample, rank, DPO" loop of Xu et al., 2023 and Yuan et al., 2024).

The pairs, with every score, go to ``rollout_pairs.jsonl`` (a resumed run reads them
back); the held-out prompts are answered before and after as for PPO (eval.json).
"""

from __future__ import annotations

from typing import Any

from tunelab.alignment.best_of_n import SampledBeforeTraining, best_and_worst, made_once, sample_groups
from tunelab.alignment.dpo import DPOTrainer
from tunelab.alignment.policy_eval import PolicyEvaluation, check_hardest, prompt_rows
from tunelab.errors import TunelabError
from tunelab.training.data import completion_row


class RolloutDPOTrainer(SampledBeforeTraining, PolicyEvaluation, DPOTrainer):
    """``stage: rollout-dpo``: pairs from the policy's own scored samples, then DPO."""

    PAIRS_FILE = "rollout_pairs.jsonl"
    evaluates_pairs = False  # eval_rows are held-out prompts, answered greedily (PolicyEvaluation)

    def __init__(self, config: Any, loaded: Any = None, *, progress: bool = True, reward: Any = None,
                 monitor: Any = None) -> None:
        if config.ppo.group_size < 2:
            raise TunelabError("stage rollout-dpo pairs the best and worst of ppo.group_size samples: set it to 2 or more")
        check_hardest(config.ppo)
        super().__init__(config, loaded, progress=progress)
        self.set_scorers(reward, monitor)
        self.prompts = self.rows  # prompt rows until the pairs replace them
        self.before: dict[str, Any] | None = None
        self.pair_count = 0

    def load_rows(self, data: str, split: str | None, limit: int | None) -> list[dict[str, Any]]:
        return prompt_rows(self.config, self.builder, self.tokenizer, self.loaded.is_encoder_decoder, data, split, limit)

    def evaluate(self) -> dict[str, float]:
        return {}  # the held-out evaluation of a policy generates: see PolicyEvaluation

    def make_pairs(self) -> list[dict[str, Any]]:
        """Sample, score, and pair each prompt's best sample with its worst."""
        n = self.config.ppo.group_size
        responses, texts, scores, self.sampling_seconds = sample_groups(self, self.prompts)
        self.setup_seconds += self.sampling_seconds  # (DPO adds its reference pass to it)
        pairs = []
        for i, (row, picked) in enumerate(zip(self.prompts, best_and_worst(scores, n))):
            if picked is None:
                continue
            best, worst = i * n + picked[0], i * n + picked[1]
            pairs.append({"prompt": row["text"], "prompt_ids": row["ids"], "chosen": texts[best], "rejected": texts[worst],
                          "chosen_ids": responses[best], "rejected_ids": responses[worst],
                          "chosen_score": scores[best], "rejected_score": scores[worst],
                          "scores": scores[i * n : (i + 1) * n]})
        if not pairs:
            raise TunelabError(f"rollout-dpo: every prompt's {n} samples scored the same; there is no preference to learn")
        return pairs

    def train(self, resume: bool = False) -> Any:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.PAIRS_FILE
        self.evaluate_before(resume)
        self.choose_prompts(resume)
        pairs = made_once(path, resume, self.make_pairs, self.accelerator.is_main_process)
        encoder_decoder = self.loaded.is_encoder_decoder
        self.rows = [{"chosen": completion_row(p["prompt_ids"], p["chosen_ids"], encoder_decoder),
                      "rejected": completion_row(p["prompt_ids"], p["rejected_ids"], encoder_decoder)} for p in pairs]
        self.pair_count = len(pairs)
        return super().train(resume)

    def on_train_end(self, result: Any) -> Any:
        return self.evaluate_after(result, sampling_seconds=round(self.sampling_seconds, 3), pairs=self.pair_count)


__all__ = ["RolloutDPOTrainer"]
