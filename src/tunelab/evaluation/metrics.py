"""ROUGE (rouge-score) and BLEU/chrF (sacrebleu) for predictions with one or more references.

ROUGE is an F-measure in [0, 1], with the Porter stemmer. With several references per
prediction, ``multi_ref="mean"`` averages over every (prediction, reference) pair — how
the course scored DialogSum's test split, flattened to 1,500 rows — and ``"max"`` keeps
each prediction's best reference. ROUGE-Lsum splits texts into sentences at newlines;
we first put each sentence on its own line (a regex split on ., ! and ?), as
transformers' summarization example does with nltk before calling ``evaluate``.

BLEU and chrF are corpus-level, on sacrebleu's 0-100 scale, with every reference used
(sacrebleu's multi-reference mode).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, for ROUGE-Lsum."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]], multi_ref: str = "mean") -> dict[str, float]:
    from rouge_score import rouge_scorer

    if multi_ref not in ("mean", "max"):
        raise ValueError(f"multi_ref must be 'mean' or 'max', got '{multi_ref}'")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    count = 0
    for prediction, refs in zip(predictions, references, strict=True):
        pair_scores = [scorer.score(split_sentences(ref), split_sentences(prediction)) for ref in refs]
        if multi_ref == "mean":
            for scores in pair_scores:
                for key in ROUGE_KEYS:
                    totals[key] += scores[key].fmeasure
            count += len(pair_scores)
        else:
            for key in ROUGE_KEYS:
                totals[key] += max(scores[key].fmeasure for scores in pair_scores)
            count += 1
    return {key: totals[key] / count for key in ROUGE_KEYS} if count else dict.fromkeys(ROUGE_KEYS, 0.0)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants one list per reference position; rows with fewer references
    leave a hole (None), which sacrebleu skips for that row."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def bleu_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    import sacrebleu

    streams = _reference_streams(references)
    return {
        "bleu": sacrebleu.corpus_bleu(list(predictions), streams).score,
        "chrf": sacrebleu.corpus_chrf(list(predictions), streams).score,
    }


def score(predictions: Sequence[str], references: Sequence[Sequence[str]], multi_ref: str = "mean") -> dict[str, float]:
    """Every metric for one set of predictions: rouge1/2/L/Lsum (0-1), bleu, chrf (0-100), n."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(not refs for refs in references):
        raise ValueError("every prediction needs at least one reference")
    return {**rouge(predictions, references, multi_ref), **bleu_chrf(predictions, references), "n": len(predictions)}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams over all n-grams, across every
    text together. A policy that collapses onto one phrase scores near 0; varied text
    near 1. Words are whitespace-split and lower-cased. No n-grams at all gives 0."""
    grams = [tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
