"""The shared fine-tuning losses against hand-computed values on tiny inputs, and their gradient directions."""

import math

import numpy as np
import pytest
import torch

from vla_cl.updaters.losses import (
    baseline_advantages,
    combine,
    entropy_bonus,
    group_advantages,
    kl_penalty_loss,
    policy_gradient_loss,
    ppo_policy_loss,
    reduce_positions,
    sft_loss,
    value_loss,
)


def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def val(tensor):
    return float(tensor.detach())


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------------------------------------ advantages


def test_group_advantages_by_hand():
    rewards = t([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards, eps=0.0 + 1e-12)
    # group 1: mean 0.5, std (ddof 0) 0.5; group 2: constant -> no signal; group 3: mean 0.75, std sqrt(27/16)
    std3 = math.sqrt((2.25**2 + 3 * 0.75**2) / 4)
    expected = [[1, -1, -1, 1], [0, 0, 0, 0], [2.25 / std3, -0.75 / std3, -0.75 / std3, -0.75 / std3]]
    assert adv.numpy() == pytest.approx(np.array(expected), abs=1e-9)
    assert group_advantages(rewards, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_group_advantages_reject_single_sample_groups_and_nan():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(t([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(t([[1.0, float("nan")]]))


def test_baseline_advantages_by_hand():
    rewards = t([1.0, 2.0, 3.0, 6.0])
    assert baseline_advantages(rewards).tolist() == [-2.0, -1.0, 0.0, 3.0]
    assert baseline_advantages(rewards, baseline=1.0).tolist() == [0.0, 1.0, 2.0, 5.0]
    scaled = baseline_advantages(rewards, scale=True, eps=0.0)
    assert scaled.numpy() == pytest.approx(np.array([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(3.5))
    masked = baseline_advantages(rewards, mask=torch.tensor([True, True, True, False]))
    assert masked.tolist() == [-1.0, 0.0, 1.0, 0.0]  # mean of the first three; the masked one gets 0


# ------------------------------------------------------------------------------------------ policy gradient


def test_reinforce_loss_value_and_gradient_by_hand():
    logits = t([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], grad=True)
    actions = torch.tensor([0, 2])
    advantages = t([1.0, -2.0])
    terms = policy_gradient_loss(logits, actions, advantages)
    log_p = np_log_softmax(logits.detach().numpy())
    expected = -(1.0 * log_p[0, 0] + -2.0 * log_p[1, 2]) / 2
    assert val(terms["loss_policy"]) == pytest.approx(expected, abs=1e-12)
    assert val(terms["loss"]) == pytest.approx(expected, abs=1e-12)
    terms["loss"].backward()
    # d/dz [-A log softmax(z)_a] = -A (onehot(a) - p), averaged over the 2 positions
    p = np.exp(log_p)
    onehot = np.eye(3)[[0, 2]]
    grad = -(np.array([[1.0], [-2.0]]) * (onehot - p)) / 2
    assert logits.grad.numpy() == pytest.approx(grad, abs=1e-12)


def test_policy_gradient_step_moves_probability_the_advantage_way():
    logits = t([[0.2, -0.1, 0.4], [0.2, -0.1, 0.4]], grad=True)
    actions = torch.tensor([1, 1])
    for sign in (1.0, -1.0):
        logits.grad = None
        policy_gradient_loss(logits, actions, t([sign, sign]))["loss"].backward()
        stepped = logits.detach() - 0.1 * logits.grad
        before = torch.log_softmax(logits.detach(), -1)[0, 1]
        after = torch.log_softmax(stepped, -1)[0, 1]
        assert (after - before) * sign > 0


def test_clipped_surrogate_by_hand():
    # One position, two actions; pi(a=0) = 0.6 now, pi_old(a=0) = 0.4 -> ratio 1.5.
    logits = t([[math.log(0.6), math.log(0.4)]], grad=True)
    old = torch.log(t([0.4]))
    positive = policy_gradient_loss(logits, torch.tensor([0]), t([2.0]), old_log_probs=old, token_clip_eps=0.2)
    assert val(positive["loss_policy"]) == pytest.approx(-1.2 * 2.0)  # clipped at 1 + eps
    assert val(positive["clip_fraction"]) == 1.0
    positive["loss"].backward()
    assert logits.grad.abs().max() == 0.0  # outside the trust region with A > 0: no push further
    logits.grad = None
    negative = policy_gradient_loss(logits, torch.tensor([0]), t([-2.0]), old_log_probs=old, token_clip_eps=0.2)
    assert val(negative["loss_policy"]) == pytest.approx(1.5 * 2.0)  # min picks the unclipped 1.5 * A
    negative["loss"].backward()
    assert logits.grad[0, 0] > 0  # gradient descent lowers the logit of the over-weighted bad action


def test_token_clip_and_whole_action_clip_by_hand():
    # One action of D = 2 tokens, each token's ratio 1.5 (pi 0.6 now, 0.4 before): the action's ratio is 2.25.
    logits = t([[[math.log(0.6), math.log(0.4)], [math.log(0.6), math.log(0.4)]]], grad=True)  # (1, 2, 2)
    tokens, old = torch.tensor([[0, 0]]), torch.log(t([[0.4, 0.4]]))
    advantage = t([-1.0])
    per_token = policy_gradient_loss(logits, tokens, advantage, old_log_probs=old, token_clip_eps=0.6,
                                     reduction="sequence_mean")
    # |1.5 - 1| < 0.6: neither token is clipped, the loss is -(sum over tokens of rho_d A) = 1.5 + 1.5
    assert val(per_token["loss_policy"]) == pytest.approx(3.0) and val(per_token["clip_fraction"]) == 0.0
    whole = ppo_policy_loss(torch.log(t([[0.6, 0.6]])).sum(-1), old.sum(-1), advantage, clip_eps=0.6)
    # |2.25 - 1| > 0.6: the action is clipped, min(2.25 A, 1.6 A) = -2.25 (A < 0 keeps the unclipped one)
    assert val(whole["loss_policy"]) == pytest.approx(2.25) and val(whole["clip_fraction"]) == 1.0
    # With one token per action the two are the same number.
    one = policy_gradient_loss(logits[:, :1], tokens[:, :1], advantage, old_log_probs=old[:, :1], token_clip_eps=0.2)
    assert val(one["loss_policy"]) == pytest.approx(
        val(ppo_policy_loss(torch.log(t([0.6])), old[:, 0], advantage, clip_eps=0.2)["loss_policy"])
    )
    with pytest.raises(ValueError, match=r"token_clip_eps must lie in \(0, 1\)"):
        policy_gradient_loss(logits, tokens, advantage, old_log_probs=old, token_clip_eps=1.0)


def test_action_token_logits_with_mask_and_both_reductions():
    # (B=2, D=2, V=3): sample 0 has both tokens, sample 1 only its first.
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(2, 2, 3))
    logits = t(raw.tolist(), grad=True)
    tokens = torch.tensor([[0, 2], [1, 1]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = t([0.5, -1.0])
    log_p = np_log_softmax(raw)
    lp = np.array([[log_p[0, 0, 0], log_p[0, 1, 2]], [log_p[1, 0, 1], log_p[1, 1, 1]]])
    token_mean = -(0.5 * lp[0, 0] + 0.5 * lp[0, 1] - 1.0 * lp[1, 0]) / 3
    sequence_mean = -((0.5 * (lp[0, 0] + lp[0, 1])) + (-1.0 * lp[1, 0])) / 2
    got = policy_gradient_loss(logits, tokens, adv, mask=mask)["loss_policy"]
    assert val(got) == pytest.approx(token_mean, abs=1e-12)
    got = policy_gradient_loss(logits, tokens, adv, mask=mask, reduction="sequence_mean")["loss_policy"]
    assert val(got) == pytest.approx(sequence_mean, abs=1e-12)


def test_openvla_width_logits_use_the_action_slice():
    logits = torch.zeros(1, 1, 32064, dtype=torch.float64)
    logits[0, 0, :31744] = 50.0  # huge mass on text tokens must not matter on the action support
    logits[0, 0, 31744 + 3] = 2.0
    tokens = torch.tensor([[31744 + 3]])
    terms = policy_gradient_loss(logits, tokens, t([1.0]))
    expected = -(2.0 - math.log(math.exp(2.0) + 255.0))
    assert val(terms["loss_policy"]) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="action slice"):
        policy_gradient_loss(logits, torch.tensor([[5]]), t([1.0]))


def test_policy_gradient_rejects_bad_shapes():
    logits = t([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(logits, torch.tensor([0, 1]), t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="mask"):
        policy_gradient_loss(logits, torch.tensor([0, 1]), t([1.0, 2.0]), mask=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="selects no position"):
        policy_gradient_loss(logits, torch.tensor([0, 1]), t([1.0, 2.0]), mask=torch.tensor([False, False]))
    with pytest.raises(ValueError, match="reduction"):
        reduce_positions(t([1.0]), None, "sum")


# ------------------------------------------------------------------------------------------ SFT


def test_sft_hard_targets_are_cross_entropy():
    raw = [[2.0, 0.0, -1.0], [0.3, 0.3, 0.9]]
    terms = sft_loss(t(raw), torch.tensor([0, 2]))
    log_p = np_log_softmax(raw)
    assert val(terms["loss_sft"]) == pytest.approx(-(log_p[0, 0] + log_p[1, 2]) / 2, abs=1e-12)
    assert set(terms) == {"loss_sft", "loss"}
    assert "loss_bc" in sft_loss(t(raw), torch.tensor([0, 2]), name="bc")


def test_sft_soft_targets_by_hand_and_one_hot_equals_hard():
    raw = [[2.0, 0.0, -1.0]]
    q = t([[0.25, 0.0, 0.75]])
    log_p = np_log_softmax(raw)
    expected = -(0.25 * log_p[0, 0] + 0.75 * log_p[0, 2])
    assert val(sft_loss(t(raw), q)["loss"]) == pytest.approx(expected, abs=1e-12)
    one_hot = t([[0.0, 1.0, 0.0]])
    assert val(sft_loss(t(raw), one_hot)["loss"]) == pytest.approx(
        val(sft_loss(t(raw), torch.tensor([1]))["loss"])
    )


def test_soft_target_gradient_is_p_minus_q_and_vanishes_at_the_target():
    logits = t([[0.5, -0.5, 1.0]], grad=True)
    q = t([[0.2, 0.3, 0.5]])
    sft_loss(logits, q)["loss"].backward()
    p = torch.softmax(logits.detach(), -1)
    assert logits.grad.numpy() == pytest.approx((p - q).numpy(), abs=1e-12)
    at_target = t(torch.log(q).tolist(), grad=True)
    sft_loss(at_target, q)["loss"].backward()
    assert at_target.grad.abs().max() < 1e-12


def test_soft_targets_are_validated():
    logits = t([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="sum to 1"):
        sft_loss(logits, t([[0.5, 0.2, 0.2]]))
    with pytest.raises(ValueError, match="non-negative"):
        sft_loss(logits, t([[1.2, -0.2, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        sft_loss(logits, t([[0.5, 0.5]]))


# ------------------------------------------------------------------------------------------ KL penalty


def test_kl_penalty_value_by_hand_and_no_gradient_to_pi0():
    base = t([[math.log(0.3), math.log(0.7)]], grad=True)
    logits = t([[math.log(0.6), math.log(0.4)]], grad=True)
    terms = kl_penalty_loss(base, logits, coef=0.1)
    kl = 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)
    assert val(terms["kl"]) == pytest.approx(kl, abs=1e-12)
    assert val(terms["loss_kl"]) == pytest.approx(0.1 * kl, abs=1e-12)
    terms["loss"].backward()
    assert base.grad is None
    # d KL(p0 || softmax(z)) / dz = softmax(z) - p0
    assert logits.grad.numpy() == pytest.approx(0.1 * np.array([[0.6 - 0.3, 0.4 - 0.7]]), abs=1e-12)


def test_kl_penalty_pulls_towards_pi0_and_is_flat_there():
    base = t([[0.1, 1.0, -0.4]])
    same = t(base.tolist(), grad=True)
    kl_penalty_loss(base, same, coef=1.0)["loss"].backward()
    assert same.grad.abs().max() < 1e-12
    moved = t([[1.5, -1.0, 0.2]], grad=True)
    before = kl_penalty_loss(base, moved, coef=1.0)["kl"]
    kl_penalty_loss(base, moved, coef=1.0)["loss"].backward()
    after = kl_penalty_loss(base, moved.detach() - 0.5 * moved.grad, coef=1.0)["kl"]
    assert after < before
    with pytest.raises(ValueError, match="coef"):
        kl_penalty_loss(base, moved, coef=-1.0)


def test_combine_sums_the_loss_terms_and_keeps_diagnostics():
    logits = t([[0.0, 1.0]], grad=True)
    base = t([[1.0, 0.0]])
    pg = policy_gradient_loss(logits, torch.tensor([1]), t([1.0]))
    kl = kl_penalty_loss(base, logits, coef=0.5)
    total = combine(pg, kl)
    assert val(total["loss"]) == pytest.approx(val(pg["loss_policy"]) + val(kl["loss_kl"]))
    assert "kl" in total and "log_prob" in total
    with pytest.raises(ValueError, match="twice"):
        combine(pg, pg)


# ------------------------------------------------------------------------------------------ PPO terms


def test_ppo_policy_loss_by_hand():
    ratios = [2.0, 0.5, 1.1, 0.5]
    old = np.log([0.25, 0.4, 0.3, 0.4])
    log_probs = t((old + np.log(ratios)).tolist(), grad=True)
    advantages = t([1.0, -1.0, 2.0, 1.0])
    terms = ppo_policy_loss(log_probs, t(old.tolist()), advantages, clip_eps=0.2)
    # surrogates min(rho A, clip(rho) A): 1.2 (clipped above), -0.8 (clipped below: the pessimistic one),
    # 2.2 (inside), 0.5 (rho A below the clip range with A > 0: the unclipped, smaller one)
    assert val(terms["loss_policy"]) == pytest.approx(-(1.2 - 0.8 + 2.2 + 0.5) / 4)
    assert val(terms["clip_fraction"]) == pytest.approx(0.75)
    k3 = [(r - 1) - math.log(r) for r in ratios]
    assert val(terms["approx_kl"]) == pytest.approx(sum(k3) / 4)
    assert val(terms["ratio"]) == pytest.approx(sum(ratios) / 4)
    terms["loss"].backward()
    # d/dlogp of rho A is rho A where the unclipped term is the minimum, 0 where the clipped one is
    assert log_probs.grad.tolist() == pytest.approx([0.0, 0.0, -2.2 / 4, -0.5 / 4])


def test_ppo_policy_loss_equals_reinforce_gradient_at_ratio_one():
    log_probs = t([-1.0, -2.0, -0.5], grad=True)
    advantages = t([0.5, -1.0, 2.0])
    terms = ppo_policy_loss(log_probs, log_probs.detach(), advantages)
    terms["loss"].backward()
    assert log_probs.grad.tolist() == pytest.approx((-advantages / 3).tolist())
    assert val(terms["approx_kl"]) == 0.0 and val(terms["clip_fraction"]) == 0.0
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_policy_loss(log_probs, log_probs.detach(), advantages, clip_eps=0.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(log_probs, log_probs.detach(), advantages[:2])


def test_value_loss_by_hand_plain_and_clipped():
    values = t([1.0, 2.0], grad=True)
    returns, old = t([1.2, 3.0]), t([0.5, 2.5])
    plain = value_loss(values, returns, coef=0.5)
    assert val(plain["loss_value"]) == pytest.approx(0.5 * 0.5 * (0.04 + 1.0) / 2)
    assert val(plain["value_error"]) == pytest.approx(0.52)
    # Var[R] = 0.81, Var[R - V] = Var[0.2, 1.0] = 0.16
    assert val(plain["explained_variance"]) == pytest.approx(1 - 0.16 / 0.81)
    clipped = value_loss(values, returns, old_values=old, clip_eps=0.2, coef=0.5)
    # clipped values 0.7 and 2.3 give squared errors 0.25 and 0.49; the max per row: 0.25 and 1.0
    assert val(clipped["loss_value"]) == pytest.approx(0.5 * 0.5 * (0.25 + 1.0) / 2)
    clipped["loss"].backward()
    # row 0's max is the clipped term, flat in V (saturated clip); row 1's is 1/2 (V - R)^2
    assert values.grad.tolist() == pytest.approx([0.0, 0.5 * 0.5 * 2 * (2.0 - 3.0) / 2])
    with pytest.raises(ValueError, match="old_values"):
        value_loss(values, returns, clip_eps=0.2)
    assert math.isnan(val(value_loss(t([1.0, 2.0]), t([3.0, 3.0]))["explained_variance"]))


def test_entropy_bonus_by_hand_and_it_raises_entropy():
    logits = t([[0.0, 0.0], [math.log(3.0), 0.0]], grad=True)
    terms = entropy_bonus(logits, coef=0.1)
    h = [math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    assert val(terms["entropy"]) == pytest.approx(sum(h) / 2)
    assert val(terms["loss_entropy"]) == pytest.approx(-0.1 * sum(h) / 2)
    terms["loss"].backward()
    stepped = (logits - 1.0 * logits.grad).detach()
    assert val(entropy_bonus(stepped, coef=0.1)["entropy"]) > sum(h) / 2
    assert logits.grad[0].abs().max() < 1e-12  # the uniform row is already at maximum entropy
    sequence = entropy_bonus(t([[[0.0, 0.0], [0.0, 0.0]]]), coef=1.0, reduction="sequence_mean")
    assert val(sequence["entropy"]) == pytest.approx(2 * math.log(2.0))  # D positions add up per action
    masked = entropy_bonus(t([[0.0, float("-inf")]]), coef=1.0)
    assert val(masked["entropy"]) == 0.0  # 0 log 0 = 0, no NaN


def test_gaussian_token_targets_by_hand():
    from vla_cl.updaters.losses import gaussian_token_targets

    support = range(100, 105)  # five bins with ids 100..104
    q = gaussian_token_targets(torch.tensor([[102, 100]]), 1.0, support)
    assert q.shape == (1, 2, 5)
    centre = torch.tensor([math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2)], dtype=torch.float64)
    edge = torch.tensor([1.0, math.exp(-0.5), math.exp(-2), math.exp(-4.5), math.exp(-8)], dtype=torch.float64)
    torch.testing.assert_close(q[0, 0].double(), centre / centre.sum(), atol=1e-6, rtol=0)
    torch.testing.assert_close(q[0, 1].double(), edge / edge.sum(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="support"):
        gaussian_token_targets(torch.tensor([[99]]), 1.0, support)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_token_targets(torch.tensor([[100]]), 0.0, support)
