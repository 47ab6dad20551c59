"""Pure loss maths for training (no model, no data): unit-tested on their own."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the tokens that have a label.

    ``logits`` (batch, k, vocab) are the model's outputs at the last k positions and
    ``labels`` (batch, k) the tokens at those positions (IGNORE_INDEX where no loss is
    taken). Position t predicts token t+1, as in transformers' causal LM loss.
    """
    predicted = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def positions_to_keep(labels: torch.Tensor) -> int:
    """How many final positions of a left-padded batch need logits: from the one before
    the earliest labelled token to the end. Prompt tokens before it need no logits at
    all, and the output layer over a 49k vocabulary is a fifth of a small model's compute."""
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return 1
    first = int(labelled.float().argmax(dim=1)[labelled.any(dim=1)].min())
    return labels.shape[1] - first + 1
