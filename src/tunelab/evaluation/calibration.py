"""Calibration of a classifier's probabilities: expected calibration error, Brier score,
and temperature scaling (Guo et al., 2017, *On Calibration of Modern Neural Networks*).

A calibrated classifier that says 0.8 is right 80% of the time. That matters where its
probability is used as a number, e.g. a toxicity score averaged into a lab's result or
used as PPO's reward. Temperature scaling divides the logits by one fitted T > 0: the
ranking of classes (so accuracy) is unchanged, only the confidence moves.
"""

from __future__ import annotations

import torch

from tunelab.evaluation.choice_metrics import calibration_error


def expected_calibration_error(probabilities: torch.Tensor, gold: torch.Tensor, bins: int = 10,
                               equal_mass: bool = True) -> float:
    """ECE of the top-class confidence of ``probabilities`` [N, classes] against ``gold`` [N]
    class indices (see ``choice_metrics.calibration_error``)."""
    confidence, predicted = probabilities.detach().float().max(-1)
    return calibration_error(confidence.numpy(), (predicted == gold).numpy(), bins, equal_mass)


def pair_accuracy_by_margin(chosen: torch.Tensor, rejected: torch.Tensor, buckets: int = 4) -> list[dict[str, float]]:
    """Preference pairs split by a reward model's confidence, |r_chosen - r_rejected|, into
    ``buckets`` equal-count groups (least confident first). Each has its margin range, its
    pairs, its accuracy (how often r_chosen > r_rejected) and the Bradley-Terry probability
    sigma(|margin|) the model gives its own pick, averaged: a reward model worth its
    confidence is right more often in the confident buckets, and a calibrated one is
    right as often as that probability says."""
    margin = (chosen - rejected).detach().float()
    confidence = margin.abs()
    groups = [g for g in torch.tensor_split(confidence.argsort(), buckets) if len(g)]
    return [{"margin_from": confidence[g].min().item(), "margin_to": confidence[g].max().item(), "pairs": len(g),
             "accuracy": (margin[g] > 0).float().mean().item(),
             "probability": torch.sigmoid(confidence[g]).mean().item()} for g in groups]


def pair_calibration_error(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 10) -> float:
    """ECE of a reward model read as a classifier of which answer is preferred:
    P(chosen) = sigma(r_chosen - r_rejected) (Bradley-Terry), equal-mass bins."""
    probabilities = torch.stack([rejected, chosen], -1).detach().float().softmax(-1)
    return expected_calibration_error(probabilities, torch.ones(len(chosen), dtype=torch.long), bins)


def brier_score(probabilities: torch.Tensor, gold: torch.Tensor) -> float:
    """Mean squared distance between the probability vector and the one-hot answer (0 is
    perfect; summed over classes, as Brier defined it)."""
    one_hot = torch.nn.functional.one_hot(gold, probabilities.shape[-1]).float()
    return ((probabilities - one_hot) ** 2).sum(-1).mean().item()


def fit_temperature(logits: torch.Tensor, gold: torch.Tensor, steps: int = 100) -> float:
    """The T minimising the negative log-likelihood of ``gold`` under softmax(logits / T);
    fitted as log T so T stays positive."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")
    logits, gold = logits.detach().float(), gold.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), gold)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def calibration_metrics(logits: torch.Tensor, gold: torch.Tensor, temperature: float = 1.0,
                        prefix: str = "") -> dict[str, float]:
    """Accuracy, negative log-likelihood, 10-bin and 1-bin ECE (equal mass) and Brier score
    of softmax(logits / temperature)."""
    scaled = logits.float() / temperature
    probabilities = scaled.softmax(-1)
    return {
        f"{prefix}accuracy": (probabilities.argmax(-1) == gold).float().mean().item(),
        f"{prefix}nll": torch.nn.functional.cross_entropy(scaled, gold).item(),
        f"{prefix}ece_10": expected_calibration_error(probabilities, gold, 10),
        f"{prefix}ece_1": expected_calibration_error(probabilities, gold, 1),
        f"{prefix}brier": brier_score(probabilities, gold),
    }


__all__ = ["brier_score", "calibration_error", "calibration_metrics", "expected_calibration_error", "fit_temperature"]
