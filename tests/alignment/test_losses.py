"""Alignment loss maths against hand-computed values (and TRL's DPO formula)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tunelab.alignment import losses as L


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    expected = (-math.log(sigmoid(1.0)) - math.log(sigmoid(-1.0))) / 2
    assert L.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected)
    # a margin demands a wider gap: pair 1 now has gap 1 - 0.5
    with_margin = L.bradley_terry_loss(chosen, rejected, torch.tensor([0.5, 0.0])).item()
    assert with_margin == pytest.approx((-math.log(sigmoid(0.5)) - math.log(sigmoid(-1.0))) / 2)


def trl_dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing=0.0, chosen_mask=None, rejected_mask=None):
    """TRL 1.16's DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py, 'reverse_kl'
    branch; 'sigmoid', 'robust'-style label smoothing and 'ipo'), transcribed: TRL computes it
    inline from model outputs, so it cannot be called on fixed log-probs directly."""
    chosen_scores = chosen - ref_chosen
    rejected_scores = rejected - ref_rejected
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta_score) - label_smoothing * F.logsigmoid(-beta * delta_score)
    chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)
    rejected_avg_score = rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)
    return (chosen_avg_score - rejected_avg_score - 1 / (2 * beta)) ** 2


LOGPS = dict(
    policy_chosen=torch.tensor([-10.0, -22.5, -7.25]), policy_rejected=torch.tensor([-12.0, -20.0, -9.0]),
    reference_chosen=torch.tensor([-11.0, -21.0, -7.0]), reference_rejected=torch.tensor([-11.5, -21.5, -8.0]),
)


def test_dpo_sigmoid_by_hand_and_against_trl():
    terms = L.dpo_loss(**LOGPS, beta=0.1)
    # row 0: (-10 + 11) - (-12 + 11.5) = 1.5 -> -log sigmoid(0.15)
    assert terms.losses[0].item() == pytest.approx(-math.log(sigmoid(0.15)))
    assert terms.chosen_rewards[0].item() == pytest.approx(0.1)
    assert terms.rejected_rewards[0].item() == pytest.approx(-0.05)
    trl = trl_dpo_losses(*LOGPS.values(), beta=0.1, loss_type="sigmoid")
    torch.testing.assert_close(terms.losses, trl)
    smoothed = L.dpo_loss(**LOGPS, beta=0.5, label_smoothing=0.2)
    torch.testing.assert_close(smoothed.losses, trl_dpo_losses(*LOGPS.values(), beta=0.5, loss_type="sigmoid", label_smoothing=0.2))


def test_ipo_by_hand_and_against_trl():
    lengths_c, lengths_r = torch.tensor([4, 5, 2]), torch.tensor([2, 5, 3])
    terms = L.dpo_loss(**LOGPS, beta=0.1, loss_type="ipo", chosen_lengths=lengths_c, rejected_lengths=lengths_r)
    # row 0: 1/4 - (-0.5)/2 = 0.5; (0.5 - 5)^2
    assert terms.losses[0].item() == pytest.approx((0.5 - 5.0) ** 2)
    masks = [torch.tensor([[1] * n + [0] * (5 - n) for n in lengths]) for lengths in (lengths_c, lengths_r)]
    trl = trl_dpo_losses(*LOGPS.values(), beta=0.1, loss_type="ipo", chosen_mask=masks[0], rejected_mask=masks[1])
    torch.testing.assert_close(terms.losses, trl.float())
    with pytest.raises(ValueError, match="lengths"):
        L.dpo_loss(**LOGPS, beta=0.1, loss_type="ipo")


def test_gae_on_a_known_sequence():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])  # the last position is padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.3  # no value after the last real token
    d1 = 0.0 + gamma * 0.3 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = L.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]]))


def test_clipped_policy_objective_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    terms = L.ppo_policy_loss(new, old, advantages, mask, clip_range=0.2)
    # per token: max(-A r, -A clip(r)): 1.5 clipped to 1.2 -> max(-1.5, -1.2) = -1.2;
    # A=-1, r=0.5 -> max(0.5, 0.8) = 0.8; r=1.1 inside -> -2.2
    assert terms.loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert terms.clip_fraction.item() == pytest.approx(2 / 3)
    loss, fraction = L.ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
                                      torch.ones(1, 2), clip_range=0.2)
    # token 0: max((1-0)^2, (0.2-0)^2) = 1; token 1: max(1, 1) = 1 -> 0.5 * mean = 0.5
    assert loss.item() == pytest.approx(0.5)


def test_token_rewards_kl_and_score_at_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = L.token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0]]))


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(L.kl_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    k3 = L.kl_per_token(logp, ref, "k3")
    r = torch.exp(ref - logp)
    torch.testing.assert_close(k3, (r - 1) - torch.log(r))
    assert (k3 >= 0).all()
    assert L.kl_per_token(logp, logp, "k3").abs().max() == 0


def test_whiten_and_masked_stats_ignore_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert L.masked_mean(values, mask).item() == pytest.approx(2.0)
    whitened = L.masked_whiten(values, mask)
    assert whitened[0, 3] == 0
    assert L.masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert L.masked_var(whitened, mask).item() == pytest.approx(1.0, rel=1e-4)


def test_adaptive_kl_controller_moves_towards_the_target():
    controller = L.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(12.0, n_steps=1000)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 0.1))
    controller.update(3.0, n_steps=1000)  # error -0.5 clipped to -0.2
    assert controller.value == pytest.approx(0.2 * 1.02 * 0.98)


def test_running_moments_match_the_whole_sample():
    torch.manual_seed(0)
    parts = [torch.randn(5) * 3 + 1, torch.randn(7), torch.randn(2) + 4]
    moments = L.RunningMoments()
    for part in parts:
        moments.update(part)
    everything = torch.cat(parts).double()
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std(unbiased=False).item())


def test_token_logprobs_equal_log_softmax():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(L.token_logprobs(logits, tokens), expected)
    assert L.entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))


def test_rloo_advantages_by_hand():
    # two prompts, three samples each
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    expected = [1 - (2 + 6) / 2, 2 - (1 + 6) / 2, 6 - (1 + 2) / 2, 0 - 1.5, 0 - 1.5, 3 - 0.0]
    advantages = L.rloo_advantages(rewards, 3)
    assert advantages.tolist() == pytest.approx(expected)
    # the leave-one-out baseline is k/(k-1) times the mean-centred reward: zero mean per prompt
    assert advantages.reshape(2, 3).sum(dim=1).tolist() == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        L.rloo_advantages(rewards, 1)


def test_grpo_advantages_by_hand():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 5.0])
    # pairs: [1, 3] -> (-1, 1) / sqrt(2); [2, 2] and [5, 5] are constant -> 0
    advantages = L.grpo_advantages(scores, 2, eps=0.0).tolist()
    std = math.sqrt(2)  # [1, 3]: unbiased std
    assert advantages[:2] == pytest.approx([-1 / std, 1 / std])
    grouped = L.grpo_advantages(scores, 2).reshape(3, 2)
    assert grouped.sum(dim=1).abs().max().item() < 1e-6  # zero mean per prompt
    assert grouped[1].tolist() == [0.0, 0.0] and grouped[2].tolist() == [0.0, 0.0]
    three = L.grpo_advantages(torch.tensor([0.0, 1.0, 2.0]), 3, eps=0.0)
    assert three.tolist() == pytest.approx([-1.0, 0.0, 1.0])
