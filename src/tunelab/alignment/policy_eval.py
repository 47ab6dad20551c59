"""Held-out evaluation of a policy, shared by every online method (PPO, RLOO, GRPO), by
rejection sampling and by rollout DPO: greedy responses to held-out prompts, scored by
the run's reward (and the sampling of training responses they share, and the recipe's
rule for which training prompts to use, ``ppo.hardest_prompts``).

The summary holds what shows whether alignment worked without reward hacking: the
reward, the probability of the rewarded class (for a classifier reward), response
length in tokens, distinct-2 (collapse onto one phrase shows as a drop) and ROUGE when
the prompts have references. Every response with its scores goes to a JSONL file.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from tunelab.data import load_examples
from tunelab.errors import TunelabError
from tunelab.evaluation import distinct_n, rouge
from tunelab.files import write_json, write_jsonl
from tunelab.training.data import fit_prompt


def prompt_rows(config: Any, builder: Any, tokenizer: Any, is_encoder_decoder: bool, data: str, split: str | None,
                limit: int | None) -> list[dict[str, Any]]:
    """Prompts for an online method: token ids (room left for ``ppo.max_new_tokens`` in a
    decoder-only model), the rendered text the reward sees, and references for ROUGE;
    built as for fine-tuning, so a policy is evaluated on the text it was trained with."""
    room = config.max_length - (0 if is_encoder_decoder else config.ppo.max_new_tokens)
    rows = []
    for example in load_examples(data, split, input_field=config.input_field, target_field=config.target_field, limit=limit):
        ids = fit_prompt(example, builder, tokenizer, room)
        if ids is None:
            raise TunelabError(f"example '{example.id}': the prompt template alone exceeds max_length")
        rows.append({"ids": ids, "text": builder.render(example, []), "input": example.input,
                     "references": example.references})
    return rows


def check_hardest(settings: Any) -> None:
    """The ppo section's prompt rule is one the trainers know."""
    if settings.hardest_by not in ("response", "prompt"):
        raise TunelabError(f"ppo.hardest_by must be 'response' or 'prompt', not '{settings.hardest_by}'")
    if settings.hardest_prompts < 0:
        raise TunelabError("ppo.hardest_prompts must be 0 (all prompts) or a positive count")


@dataclass
class ScoredTexts:
    """Responses with their scores; ``label_probability`` for a classifier reward and
    ``monitor`` for a second scorer that is reported but not trained on."""

    texts: list[str]
    tokens: list[int]
    scores: list[float]
    label_probability: list[float] | None = None
    monitor: list[float] | None = None


@dataclass
class Monitor:
    """A second reward scored on held-out responses only, e.g. the hh-rlhf reward model
    beside a toxicity reward: if the trained reward rises while this one falls, the policy
    gamed its reward. ``prompt`` renders each raw prompt as the monitor was trained to read
    it ({input} is replaced)."""

    reward: Any
    prompt: str = "{input}"

    def __call__(self, rows: Sequence[dict[str, Any]], texts: list[str]) -> list[float]:
        prompts = [self.prompt.replace("{input}", row["input"]) for row in rows]
        return torch.as_tensor(self.reward(prompts, texts), dtype=torch.float).tolist()


def load_monitor(settings: Any) -> Monitor | None:
    """The monitor a recipe's ppo section names (monitor_reward, monitor_prompt), if any."""
    if not settings.monitor_reward:
        return None
    from tunelab.alignment.reward import load_reward

    return Monitor(load_reward(settings.monitor_reward), settings.monitor_prompt)


def score_texts(reward: Any, prompts: Sequence[str], texts: list[str], tokens: list[int]) -> ScoredTexts:
    """Scores from ``reward``; a classifier (a ModelScorer with classes) runs once and also
    gives the rewarded class's probability."""
    if hasattr(reward, "reward_from_logits") and len(reward.labels) > 1:
        logits = reward.logits(list(prompts), texts)
        scores = reward.reward_from_logits(logits).tolist()
        probability = reward.probabilities(logits)[:, reward.label_index].tolist()
        return ScoredTexts(texts, tokens, scores, probability)
    return ScoredTexts(texts, tokens, torch.as_tensor(reward(list(prompts), texts), dtype=torch.float).tolist())


@torch.no_grad()
def greedy_responses(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, *,
                     batch_size: int = 16, progress: bool = False, desc: str = "eval") -> tuple[list[str], list[int]]:
    """Greedy responses (text, token count) to tokenized prompts."""
    from tunelab.generation import GenerationSettings
    from tunelab.generation.batched import generate_from_ids

    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    outputs = generate_from_ids(model, tokenizer, prompt_ids, settings, progress=progress, desc=desc)
    return [o.text for o in outputs], [len(o.token_ids) for o in outputs]


@torch.no_grad()
def sample_responses(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], settings: Any, *,
                     max_new_tokens: int, seed: int, batch_size: int, progress: bool = False,
                     desc: str = "sampling") -> tuple[list[list[int]], list[str]]:
    """Sampled responses as the ppo section says (temperature, top_k, top_p): (token ids,
    texts). The sampled end-of-sequence token is kept in the ids (it is part of the action
    sequence), and an empty response becomes that token alone."""
    from tunelab.generation import GenerationSettings
    from tunelab.generation.batched import generate_from_ids

    generation = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=settings.temperature,
                                    top_k=settings.top_k, top_p=settings.top_p, batch_size=batch_size, seed=seed)
    outputs = generate_from_ids(model, tokenizer, prompt_ids, generation, progress=progress, desc=desc)
    responses = [o.token_ids + ([o.eos_token_id] if o.eos_token_id is not None else []) for o in outputs]
    return [r or [tokenizer.eos_token_id] for r in responses], [o.text for o in outputs]


def summarise(scored: ScoredTexts, references: Sequence[Sequence[str]] | None = None, label: str | None = None) -> dict[str, Any]:
    """The numbers eval.json holds for one policy."""
    result: dict[str, Any] = {
        "n": len(scored.texts),
        "reward_mean": statistics.fmean(scored.scores),
        "reward_std": statistics.pstdev(scored.scores),
    }
    if scored.label_probability is not None:
        result.update(label=label, label_probability_mean=statistics.fmean(scored.label_probability),
                      label_probability_std=statistics.pstdev(scored.label_probability),
                      label_probability_over_half=sum(p > 0.5 for p in scored.label_probability) / len(scored.texts))
    if scored.monitor is not None:
        result.update(monitor_reward_mean=statistics.fmean(scored.monitor), monitor_reward_std=statistics.pstdev(scored.monitor))
    result.update(response_tokens_mean=statistics.fmean(scored.tokens),
                  empty_responses=sum(not t.strip() for t in scored.texts),
                  distinct_1=distinct_n(scored.texts, 1), distinct_2=distinct_n(scored.texts, 2))
    if references and all(references):
        result.update(rouge(scored.texts, list(references)))
    result["samples"] = scored.texts[:5]
    return result


def write_responses(path: Path, prompts: Sequence[str], scored: ScoredTexts) -> None:
    """Every held-out response with its scores, to see what changed where."""
    records = []
    for i, (prompt, text, tokens, score) in enumerate(zip(prompts, scored.texts, scored.tokens, scored.scores)):
        record = {"index": i, "prompt": prompt, "response": text, "tokens": tokens, "score": score}
        if scored.label_probability is not None:
            record["label_probability"] = scored.label_probability[i]
        if scored.monitor is not None:
            record["monitor_score"] = scored.monitor[i]
        records.append(record)
    write_jsonl(path, records)


def evaluate_policy(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], reward: Any, *, max_new_tokens: int,
                    output: Path | None = None, progress: bool = False, desc: str = "eval",
                    monitor: Monitor | None = None) -> dict[str, Any]:
    """Greedy responses to ``rows`` (prompt_rows' output), scored and summarised; with
    ``output``, every response is written there as JSONL."""
    texts, tokens = greedy_responses(model, tokenizer, [r["ids"] for r in rows], max_new_tokens, progress=progress, desc=desc)
    prompts = [r["text"] for r in rows]
    scored = score_texts(reward, prompts, texts, tokens)
    if monitor is not None:
        scored.monitor = monitor(rows, texts)
    if output is not None:
        write_responses(output, prompts, scored)
    label = None
    if scored.label_probability is not None:
        label = reward.labels[reward.label_index]
    return summarise(scored, [r.get("references") or [] for r in rows], label)


class PolicyEvaluation:
    """The held-out evaluation of a trainer's policy (PPO, RLOO, GRPO, rejection sampling,
    rollout DPO): greedy answers to ``eval_rows`` before training (``eval_before.json``,
    read back by a resumed run), along the way at ``eval_steps``/``eval_seconds`` (the
    numbers as ``heldout_*`` in metrics.jsonl, the answers in ``eval_step-N.jsonl``) and
    after (``eval.json`` with both). A mixin for an engine Trainer with ``reward`` and
    ``monitor`` set."""

    before: dict[str, Any] | None = None

    def set_scorers(self, reward: Any = None, monitor: Any = None) -> None:
        """The run's reward (given, as tests do, or loaded from ``ppo.reward``) and its
        optional monitor (given, or from ``ppo.monitor_reward``)."""
        settings = self.config.ppo
        if reward is None:
            from tunelab.alignment.reward import load_reward

            if not settings.reward:
                raise TunelabError("ppo.reward is not set: give a reward model or classifier folder, or module:function")
            reward = load_reward(settings.reward, output=settings.reward_output, label=settings.reward_label)
        self.reward = reward
        self.monitor = monitor if monitor is not None else load_monitor(settings)

    def evaluate_policy(self, name: str) -> dict[str, Any]:
        """Greedy responses to the held-out prompts, scored; every response goes to eval_<name>.jsonl."""
        main = self.accelerator.is_main_process
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            return evaluate_policy(model, self.tokenizer, self.eval_rows, self.reward,
                                   max_new_tokens=self.config.ppo.max_new_tokens,
                                   output=self.output_dir / f"eval_{name}.jsonl" if main else None,
                                   progress=self.progress, desc=f"eval ({name})", monitor=self.monitor)
        finally:
            model.train(was_training)

    def keep_hardest(self, rows: list[dict[str, Any]], resume: bool) -> list[dict[str, Any]]:
        """ppo.hardest_prompts: the training prompt rows the reward scores lowest, by their
        greedy response or (hardest_by: prompt) by the prompt's own text; all rows when it
        is 0. The choice is written to hardest_prompts.json; a resumed run reads it back.
        A rule written in the recipe, applied to training prompts only."""
        settings = self.config.ppo
        if not settings.hardest_prompts:
            return rows
        path = self.output_dir / "hardest_prompts.json"
        chosen = self._chosen_before(path, len(rows)) if resume else None
        if chosen is None:
            texts, scores = self._hardness(rows)
            chosen = sorted(range(len(scores)), key=lambda i: (scores[i], i))[: settings.hardest_prompts]
            if self.accelerator.num_processes > 1:  # every process trains on the main one's choice
                from accelerate.utils import broadcast_object_list

                chosen = broadcast_object_list([chosen])[0]
            if self.accelerator.is_main_process:
                write_json(path, {"pool": len(rows), "by": settings.hardest_by, "pool_score_mean": statistics.fmean(scores),
                                   "indices": chosen, "scores": [scores[i] for i in chosen], "texts": [texts[i] for i in chosen]})
        return [rows[i] for i in chosen]

    def _chosen_before(self, path: Path, pool: int) -> list[int] | None:
        """The interrupted run's choice, if it was made with the settings of this one."""
        if not path.is_file():
            return None
        saved, settings = json.loads(path.read_text()), self.config.ppo
        if (saved["pool"], saved["by"], len(saved["indices"])) != (pool, settings.hardest_by, min(settings.hardest_prompts, pool)):
            raise TunelabError(f"--resume: {path} chose {len(saved['indices'])} of {saved['pool']} prompts by "
                               f"{saved['by']}; this run asks for {settings.hardest_prompts} of {pool} by "
                               f"{settings.hardest_by}: resume with the interrupted run's limit and ppo settings")
        return saved["indices"]

    def _hardness(self, rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[float]]:
        """(the text scored, its score) for every training prompt row."""
        if self.config.ppo.hardest_by == "prompt":  # no generation: the request itself, as the reward reads a text
            texts = [r["input"] for r in rows]
            return texts, score_texts(self.reward, [""] * len(texts), texts, []).scores
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            texts, tokens = greedy_responses(model, self.tokenizer, [r["ids"] for r in rows], self.config.ppo.max_new_tokens,
                                             progress=self.progress, desc="finding the hardest prompts")
        finally:
            model.train(was_training)
        return texts, score_texts(self.reward, [r["text"] for r in rows], texts, tokens).scores

    def evaluate_before(self, resume: bool) -> None:
        path = self.output_dir / "eval_before.json"
        if resume:  # the weights are no longer the start's: only what was measured then counts
            self.before = json.loads(path.read_text()) if path.is_file() else None
        elif self.eval_rows:
            self.before = self.evaluate_policy("before")
            if self.accelerator.is_main_process:
                write_json(path, self.before)

    def evaluate_during_training(self, state: dict[str, Any]) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        summary = self.evaluate_policy(f"step-{state['step']}")
        return {f"heldout_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}

    def evaluate_after(self, result: Any, **extra: Any) -> Any:
        """eval.json = before and after; both (and ``extra`` numbers) go into summary.json too."""
        result.summary.update(extra)
        if self.before is not None and self.eval_rows:
            comparison = {"before": self.before, "after": self.evaluate_policy("after")}
            result.summary["eval"] = comparison
            if self.accelerator.is_main_process:
                write_json(self.output_dir / "eval.json", comparison)
        if self.accelerator.is_main_process and (extra or "eval" in result.summary):
            write_json(self.output_dir / "summary.json", result.summary)
        return result


__all__ = ["Monitor", "PolicyEvaluation", "ScoredTexts", "check_hardest", "evaluate_policy", "greedy_responses", "load_monitor", "prompt_rows",
           "sample_responses", "score_texts", "summarise", "write_responses"]
