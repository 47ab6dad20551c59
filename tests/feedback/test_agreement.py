"""Agreement between rankings, against hand-computed values."""

import pytest

from tunelab.feedback.agreement import agreement_report, kendall_tau_b, pairwise_agreement


def test_identical_and_reversed_rankings():
    a = {"1": 1, "2": 2, "3": 3}
    assert pairwise_agreement(a, a) == 1.0 and kendall_tau_b(a, a) == pytest.approx(1.0)
    b = {"1": 3, "2": 2, "3": 1}
    assert pairwise_agreement(a, b) == 0.0 and kendall_tau_b(a, b) == pytest.approx(-1.0)


def test_one_swap_of_three():
    # pairs (1,2) agree, (1,3) agree, (2,3) disagree: 2 of 3; tau = (2 - 1) / 3
    a, b = {"1": 1, "2": 2, "3": 3}, {"1": 1, "2": 3, "3": 2}
    assert pairwise_agreement(a, b) == pytest.approx(2 / 3)
    assert kendall_tau_b(a, b) == pytest.approx(1 / 3)


def test_ties_and_not_relevant():
    # a ties 1 and 2; b orders them. Common strict pairs: (1,3), (2,3), both agree.
    a, b = {"1": 1, "2": 1, "3": 2, "4": None}, {"1": 1, "2": 2, "3": 3, "4": 1}
    assert pairwise_agreement(a, b) == 1.0
    # tau-b: C = 2, D = 0, ties only in a = 1 -> 2 / sqrt(3 * 2)
    assert kendall_tau_b(a, b) == pytest.approx(2 / 6 ** 0.5)
    # all ties: no strict pair, tau undefined
    assert pairwise_agreement({"1": 1, "2": 1}, b) is None and kendall_tau_b({"1": 1, "2": 1}, b) is None


def test_report_per_prompt_and_labeler():
    rows = [
        {"prompt_id": 1, "user_id": 1, "ranks": {"1": 1, "2": 2, "3": 3}},
        {"prompt_id": 1, "user_id": 2, "ranks": {"1": 1, "2": 2, "3": 3}},
        {"prompt_id": 1, "user_id": 3, "ranks": {"1": 3, "2": 2, "3": 1}},
        {"prompt_id": 2, "user_id": 1, "ranks": {"4": 1, "5": 2}},
    ]
    report = agreement_report(rows, {1: "ann", 2: "bob", 3: "cy"})
    # prompt 1: pairs ann-bob 1.0, ann-cy 0.0, bob-cy 0.0
    assert report["per_prompt"][1]["agreement"] == pytest.approx(1 / 3)
    assert report["per_prompt"][2] == {"labelers": 1, "agreement": None, "kendall_tau": None}
    assert report["per_labeler"]["ann"] == {"judgements": 2, "agreement": 0.5, "kendall_tau": pytest.approx(0.0)}
    assert report["per_labeler"]["cy"]["agreement"] == 0.0
    assert report["labeler_pairs"] == 3
