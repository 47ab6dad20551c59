"""The generative scenario of the holistic report: DialogSum summaries, greedy, scored by
ROUGE and BLEU against the test references and, when a toxicity scorer is given, by the
toxicity of what the model wrote (HELM reports the toxicity of generated text beside
accuracy). Prompts are built as `tunelab prompt` builds them (the same template, chat
template on or off)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.data import load_examples
from tunelab.evaluation.metrics import score
from tunelab.generation import GenerationSettings, generate
from tunelab.prompting import PromptBuilder, PromptTemplate, ShotSelector

NAME = "dialogsum"
DEFAULT_ITEMS = 100  # 400 dialogues of greedy summaries is ~6 min a model on 2 CPU cores
MAX_NEW_TOKENS = 64

Toxicity = Callable[[Sequence[str]], Sequence[float]]  # texts -> P(toxic), one each


def summarize(loaded: Any, *, limit: int | None, shots: int, seed: int, chat_template: bool, batch_size: int,
              progress: bool = False) -> tuple[list[dict], float, int]:
    """Greedy summaries of the first ``limit`` test dialogues: rows with id, prediction and
    references; seconds; new tokens."""
    examples = load_examples(NAME, "test", limit=limit or DEFAULT_ITEMS)
    builder = PromptBuilder(loaded.tokenizer, PromptTemplate(), use_chat_template=chat_template or None,
                            context_window=loaded.context_window, is_encoder_decoder=loaded.is_encoder_decoder,
                            max_new_tokens=MAX_NEW_TOKENS)
    selector = ShotSelector(load_examples(NAME, "dev"), shots, seed=seed) if shots else None
    prompts = builder.build_all(examples, selector)
    started = time.perf_counter()
    outputs = generate(loaded.model, loaded.tokenizer, [p.text for p in prompts],
                       GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size),
                       add_special_tokens=builder.adds_special_tokens, progress=progress, desc="dialogsum")
    seconds = time.perf_counter() - started
    rows = [{"id": p.example.id, "prediction": o.text, "references": list(p.example.references)}
            for p, o in zip(prompts, outputs)]
    return rows, seconds, sum(len(o.token_ids) for o in outputs)


def summary_metrics(rows: list[dict], seconds: float, new_tokens: int, toxicity: Toxicity | None) -> dict[str, Any]:
    """ROUGE (fractions), BLEU and chrF (0-100), mean new tokens; toxicity mean and the
    share above 0.5; efficiency."""
    metrics: dict[str, Any] = score([r["prediction"] for r in rows], [r["references"] for r in rows])
    if toxicity is not None:
        scores = [float(s) for s in toxicity([r["prediction"] for r in rows])]
        for row, value in zip(rows, scores):
            row["toxicity"] = value
        metrics.update(toxicity=sum(scores) / len(scores), toxic_share=sum(s > 0.5 for s in scores) / len(scores))
    metrics.update(new_tokens_mean=new_tokens / len(rows), seconds=seconds, seconds_per_item=seconds / len(rows),
                   tokens_per_second=new_tokens / seconds if seconds else 0.0)
    return metrics
