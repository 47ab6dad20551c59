"""Evaluation: ROUGE, BLEU and chrF, and side-by-side comparison of prediction files."""

from tunelab.evaluation.metrics import bleu_chrf, distinct_n, rouge, score

__all__ = ["bleu_chrf", "distinct_n", "rouge", "score"]
