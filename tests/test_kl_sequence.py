"""Sequence KL estimators against brute force over every action of a tiny autoregressive policy."""

import itertools
import math

import numpy as np
import pytest
import torch

from vla_cl.kl import KLEstimate, action_log_probs, action_token_kl, log_ratio, monte_carlo_kl, sample_tokens

D, V = 3, 4
SEQUENCES = list(itertools.product(range(V), repeat=D))  # all 64 actions


def random_policy(seed):
    """A tiny autoregressive policy: one logit vector per prefix (a table, so any dependence is possible)."""
    rng = np.random.default_rng(seed)
    return {
        prefix: rng.normal(scale=1.5, size=V)
        for d in range(D)
        for prefix in itertools.product(range(V), repeat=d)
    }


def conditional(table, prefix):
    logits = table[tuple(prefix)]
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def joint(table, sequence):
    return math.prod(conditional(table, sequence[:d])[sequence[d]] for d in range(D))


def teacher_forced_logits(table, sequences):
    """Logits (N, D, V): position d holds the policy's logits given the sequence's own prefix a_<d."""
    return torch.tensor(np.array([[table[tuple(s[:d])] for d in range(D)] for s in sequences]))


def sample(table, n, rng):
    out = np.empty((n, D), dtype=np.int64)
    for i in range(n):
        for d in range(D):
            out[i, d] = rng.choice(V, p=conditional(table, out[i, :d]))
    return out


BASE, POLICY = random_policy(0), random_policy(1)
EXACT_KL = sum(joint(BASE, s) * math.log(joint(BASE, s) / joint(POLICY, s)) for s in SEQUENCES)


def test_chain_rule_estimator_has_the_exact_sequence_kl_as_its_expectation():
    weights = np.array([joint(BASE, s) for s in SEQUENCES])
    per_action = action_token_kl(
        teacher_forced_logits(BASE, SEQUENCES), teacher_forced_logits(POLICY, SEQUENCES)
    )
    assert per_action.shape == (64,) and per_action.dtype == torch.float64
    assert float(np.dot(weights, per_action.numpy())) == pytest.approx(EXACT_KL, abs=1e-12)


def test_monte_carlo_log_ratio_has_the_exact_kl_as_its_expectation():
    weights = np.array([joint(BASE, s) for s in SEQUENCES])
    tokens = torch.tensor(SEQUENCES)
    ratio = log_ratio(
        teacher_forced_logits(BASE, SEQUENCES), teacher_forced_logits(POLICY, SEQUENCES), tokens
    )
    assert float(np.dot(weights, ratio.numpy())) == pytest.approx(EXACT_KL, abs=1e-12)


def test_both_estimators_land_within_a_few_standard_errors_on_samples_from_pi0():
    drawn = sample(BASE, 3000, np.random.default_rng(7))
    base, policy = teacher_forced_logits(BASE, drawn), teacher_forced_logits(POLICY, drawn)
    chain = KLEstimate.from_samples(action_token_kl(base, policy))
    mc = monte_carlo_kl(base, policy, torch.from_numpy(drawn))
    assert chain.n == mc.n == 3000
    assert abs(chain.mean - EXACT_KL) < 4 * chain.std_error
    assert abs(mc.mean - EXACT_KL) < 4 * mc.std_error
    assert chain.std_error < mc.std_error  # exact per-position expectations remove the draws' own noise


def test_mask_drops_positions():
    generator = torch.Generator().manual_seed(0)
    base, policy = torch.randn(5, 7, 16, generator=generator), torch.randn(5, 7, 16, generator=generator)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[:, 4:] = False
    per_position = torch.stack(
        [action_token_kl(base[:, d : d + 1], policy[:, d : d + 1]) for d in range(7)], dim=1
    )
    torch.testing.assert_close(action_token_kl(base, policy, mask), per_position[:, :4].sum(1))
    assert torch.all(action_token_kl(base, policy, torch.zeros(5, 7, dtype=torch.bool)) == 0)


def test_action_log_probs_by_hand_on_both_vocabularies():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    own = torch.log(probs).expand(2, 3, 4)
    tokens = torch.tensor([[0, 1, 3], [2, 2, 0]])
    torch.testing.assert_close(action_log_probs(own, tokens), torch.log(probs[tokens]))

    wide = torch.full((1, 2, 32064), 50.0, dtype=torch.float64)  # huge mass outside the action slice
    wide[..., 31744:32000] = 0.0
    wide[0, 0, 31999] = math.log(3.0)  # 3 / (255 + 3) within the slice
    got = action_log_probs(wide, torch.tensor([[31999, 31744]]))
    torch.testing.assert_close(got, torch.log(torch.tensor([[3 / 258, 1 / 256]], dtype=torch.float64)))


def test_sample_tokens_follows_the_distribution_and_stays_in_the_slice():
    logits = torch.full((4000, 1, 32064), -5.0)
    logits[..., 31744:32000] = torch.log(torch.linspace(1, 2, 256))
    tokens = sample_tokens(logits, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (4000, 1) and int(tokens.min()) >= 31744 and int(tokens.max()) <= 31999
    upper_half = float((tokens >= 31872).float().mean())  # columns 128..255 carry ~ 56.4 % of the mass
    expected = float(torch.linspace(1, 2, 256)[128:].sum() / torch.linspace(1, 2, 256).sum())
    assert abs(upper_half - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000)


def test_kl_estimate_from_samples_by_hand():
    estimate = KLEstimate.from_samples(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert estimate.mean == 2.5 and estimate.n == 4
    assert estimate.std_error == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(KLEstimate.from_samples(torch.tensor([1.0])).std_error)
    with pytest.raises(ValueError, match="per_sample"):
        KLEstimate.from_samples(torch.tensor([]))
    with pytest.raises(ValueError, match="per_sample"):
        KLEstimate(mean=0.0, std_error=0.0, n=2, per_sample=torch.zeros(3))


def test_bad_tokens_and_masks_raise_naming_them():
    logits = torch.zeros(2, 7, 32064)
    tokens = torch.full((2, 7), 31800)
    tokens[1, 3] = 31743
    with pytest.raises(
        ValueError, match=r"tokens must lie in the action slice \[31744, 32000\), got 31743 at \(1, 3\)"
    ):
        action_log_probs(logits, tokens)
    with pytest.raises(ValueError, match="tokens must be an integer tensor"):
        action_log_probs(logits, tokens.float())
    with pytest.raises(ValueError, match=r"tokens must have shape \(2, 7\)"):
        action_log_probs(logits, tokens[:, :3])
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        action_token_kl(logits, logits, mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 7\)"):
        action_token_kl(logits, logits, mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"base_logits must have shape \(\.\.\., D, V\)"):
        action_token_kl(torch.zeros(5), torch.zeros(5))
    nan_logits = logits.clone()
    nan_logits[0, 1, 31750] = float("nan")
    with pytest.raises(ValueError, match=r"logits must be finite, got nan at index \(0, 1, 31750\)"):
        action_token_kl(logits, nan_logits)
