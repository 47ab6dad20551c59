import math

import pytest
import torch

from tunelab.evaluation.calibration import (brier_score, calibration_metrics, expected_calibration_error,
                                            fit_temperature, pair_accuracy_by_margin, pair_calibration_error)


def test_ece_by_hand_with_equal_mass_bins():
    # 4 items, 2 bins of 2 (sorted by confidence): {0.6 wrong, 0.7 right}, {0.8 right, 0.9 right}
    probabilities = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    gold = torch.tensor([1, 1, 0, 1])
    low = abs(0.5 - 0.65)  # accuracy 1/2, confidence 0.65
    high = abs(1.0 - 0.85)
    assert expected_calibration_error(probabilities, gold, bins=2) == pytest.approx(0.5 * low + 0.5 * high)
    # one bin: mean confidence 0.75 against accuracy 0.75
    assert expected_calibration_error(probabilities, gold, bins=1) == pytest.approx(0.0, abs=1e-7)


def test_ece_with_equal_width_bins_skips_empty_ones():
    probabilities = torch.tensor([[0.95, 0.05], [0.92, 0.08]])
    gold = torch.tensor([0, 1])
    # both in the top bin: accuracy 0.5, confidence 0.935
    assert expected_calibration_error(probabilities, gold, bins=10, equal_mass=False) == pytest.approx(0.435)


def test_brier_score_by_hand():
    probabilities = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert brier_score(probabilities, torch.tensor([0, 0])) == pytest.approx((0 + 0.5) / 2)


def test_temperature_scaling_undoes_overconfidence_and_keeps_accuracy():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 3)
    gold = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = true_logits * 3.0  # the right ranking, three times too sure
    temperature = fit_temperature(overconfident, gold)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = calibration_metrics(overconfident, gold)
    after = calibration_metrics(overconfident, gold, temperature)
    assert after["accuracy"] == before["accuracy"]
    assert after["ece_10"] < before["ece_10"] / 2 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert math.isfinite(after["ece_1"])


def test_pair_accuracy_by_margin_by_hand():
    chosen = torch.tensor([0.1, 0.0, 2.0, 0.0, 3.0, -1.0])
    rejected = torch.tensor([0.0, 0.3, 0.0, 1.0, 0.0, 1.0])
    # |margins| 0.1, 0.3 | 1.0, 2.0 | 2.0, 3.0; right: 0.1, 2.0 (chosen), 3.0; wrong: 0.3, 1.0, 2.0 (-1 vs 1)
    buckets = pair_accuracy_by_margin(chosen, rejected, buckets=3)
    assert [b["pairs"] for b in buckets] == [2, 2, 2]
    assert buckets[0]["margin_from"] == pytest.approx(0.1) and buckets[0]["margin_to"] == pytest.approx(0.3)
    assert buckets[0]["accuracy"] == 0.5
    assert buckets[0]["probability"] == pytest.approx((torch.sigmoid(torch.tensor(0.1)) + torch.sigmoid(torch.tensor(0.3))).item() / 2)
    assert buckets[-1]["margin_to"] == pytest.approx(3.0)
    assert sum(b["accuracy"] * b["pairs"] for b in buckets) == pytest.approx(3)


def test_pair_calibration_error_is_the_classifier_ece_of_sigma_margin():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])  # one right at σ(2), one wrong at σ(2)
    confidence = torch.sigmoid(torch.tensor(2.0)).item()
    assert pair_calibration_error(chosen, rejected, bins=1) == pytest.approx(abs(0.5 - confidence))
