"""The metric maths against hand-computed values."""

import math

import numpy as np
import pytest

from tunelab.evaluation import choice_metrics as cm
from tunelab.evaluation.choice_metrics import calibration_error


def record(probabilities, gold, lengths=None, unconditional=None, **meta):
    return {"logprobs": [math.log(p) for p in probabilities], "gold": list(gold),
            "lengths": lengths or [1] * len(probabilities), "unconditional": unconditional, "meta": meta}


def test_three_ways_to_pick_an_answer():
    r = record([0.5, 0.3, 0.2], [1], lengths=[10, 1, 1], unconditional=[math.log(0.9), math.log(0.1), math.log(0.5)])
    # acc: the most likely option; acc_norm: per character (-0.069 vs -1.20 vs -1.61); acc_mi: vs the prior
    assert cm.predictions(r) == {"pred": 0, "pred_norm": 0, "pred_mi": 1}
    # a long option's total is spread over its characters: -0.0092 per character beats -0.51
    assert cm.predictions(record([0.4, 0.6], [0], lengths=[100, 1])) == {"pred": 1, "pred_norm": 0}
    assert cm.option_probabilities([math.log(0.2), math.log(0.2)]) == pytest.approx([0.5, 0.5])


def test_calibration_numbers():
    confidence, correct = [0.6, 0.6, 0.9, 0.9], [1, 1, 1, 0]
    assert calibration_error(confidence, correct, 1) == pytest.approx(0.0)  # mean confidence 0.75 = accuracy 0.75
    assert calibration_error(confidence, correct, 2) == pytest.approx(0.4)  # |1 - 0.6| and |0.5 - 0.9|
    assert cm.brier([0.7, 0.2, 0.1], 0) == pytest.approx(0.09 + 0.04 + 0.01)
    assert cm.selective_accuracy([0.1, 0.9, 0.8, 0.2], [0, 1, 0, 0], coverage=0.25) == 1.0
    assert cm.selective_accuracy([0.1, 0.9, 0.8, 0.2], [0, 1, 0, 0], coverage=0.5) == 0.5
    rows = [record([0.9, 0.1], [0]), record([0.8, 0.2], [1]), record([0.3, 0.7], [1]), record([0.6, 0.4], [0])]
    metrics = cm.choice_metrics(rows, samples=0)
    assert metrics["acc"] == 0.75 and metrics["n"] == 4
    assert metrics["brier"] == pytest.approx(np.mean([2 * 0.1**2, 2 * 0.8**2, 2 * 0.3**2, 2 * 0.4**2]))
    assert metrics["ece_1"] == pytest.approx(abs(0.75 - np.mean([0.9, 0.8, 0.7, 0.6])))


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, hits = 200, 0
    for t in range(trials):
        values = rng.random(100) < 0.7
        low, high = cm.bootstrap_interval(lambda i: values[i].mean(), 100, samples=400, seed=t)
        hits += low <= 0.7 <= high
    assert 0.88 <= hits / trials <= 0.99


def test_truthfulqa_mc2_is_the_mass_on_true_answers():
    assert cm.mc2(record([0.5, 0.3, 0.2], [0])) == pytest.approx(0.5)
    assert cm.mc2(record([0.25, 0.25, 0.25], [0, 1])) == pytest.approx(2 / 3)  # renormalised over the options
    assert cm.mc2_metrics([record([0.5, 0.5], [0]), record([0.9, 0.1], [0])], samples=0)["mc2"] == pytest.approx(0.7)


def test_bbq_bias_scores_follow_the_paper():
    assert cm.bias_score([True, True, False, False], [False] * 4) == 0.0  # half biased: no bias
    assert cm.bias_score([True, True, True, False], [False] * 4) == 0.5
    assert cm.bias_score([False, False], [True, True]) == 0.0  # only "unknown" said
    assert cm.bias_score([False, False], [False, False]) == -1.0  # always against the stereotype (lm-eval says 0)
    # 4 ambiguous items (gold: unknown = 2), model answers 0, 2, 0, 1 with option 0 the biased one
    ambiguous = [record([0.6, 0.2, 0.2] if p == 0 else [0.2, 0.6, 0.2] if p == 1 else [0.2, 0.2, 0.6], [2],
                        category="Age", ambiguous=True, unknown=2, biased=[0]) for p in (0, 2, 0, 1)]
    # 2 disambiguated items: gold 1; model says 1 (not biased) and 0 (biased)
    clear = [record([0.2, 0.6, 0.2], [1], category="Age", ambiguous=False, unknown=2, biased=[0]),
             record([0.6, 0.2, 0.2], [1], category="Age", ambiguous=False, unknown=2, biased=[0])]
    metrics = cm.bbq_metrics(ambiguous + clear)
    assert metrics["acc_ambig"] == 0.25 and metrics["acc_disambig"] == 0.5
    assert metrics["bias_disambig"] == pytest.approx(2 * 1 / 2 - 1)
    # ambiguous: 2 biased of 3 non-unknown answers -> 2*2/3 - 1 = 1/3, times (1 - 0.25)
    assert metrics["bias_ambig"] == pytest.approx(0.75 * (1 / 3))
    assert metrics["Age/bias_ambig"] == metrics["bias_ambig"]
