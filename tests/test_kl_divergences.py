"""Per-distribution divergences against closed forms and a float64 numpy reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla_cl.kl import (
    OPENVLA_ACTION_SLICE,
    entropy,
    forward_kl,
    kl_from_reference_terms,
    l2_distance,
    log_probs,
    reference_terms,
    resolve_support,
    reverse_kl,
    support_log_softmax,
    total_variation,
)
from vla_cl.tokenizer import ActionTokenizer


def numpy_kl(p_logits, q_logits):
    """Reference KL(p || q) in float64 numpy, written independently of the code under test."""

    def log_softmax(x):
        x = np.asarray(x, np.float64)
        shifted = x - x.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(p_logits), log_softmax(q_logits)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def logits_of(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_bernoulli_kl_in_closed_form():
    expected = 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)
    got = forward_kl(logits_of([0.3, 0.7]), logits_of([0.6, 0.4]))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, abs=1e-14)


def test_explicit_vectors_by_hand():
    p, q = logits_of([0.5, 0.25, 0.25]), logits_of([0.25, 0.25, 0.5])
    # 0.5 ln(0.5/0.25) + 0 + 0.25 ln(0.25/0.5) = 0.25 ln 2
    assert float(forward_kl(p, q)) == pytest.approx(0.25 * math.log(2), abs=1e-14)
    p, q = logits_of([0.7, 0.2, 0.1]), logits_of([0.1, 0.3, 0.6])
    forward = 0.7 * math.log(7) + 0.2 * math.log(2 / 3) + 0.1 * math.log(1 / 6)
    backward = 0.1 * math.log(1 / 7) + 0.3 * math.log(3 / 2) + 0.6 * math.log(6)
    assert float(forward_kl(p, q)) == pytest.approx(forward, abs=1e-14)
    assert float(reverse_kl(p, q)) == pytest.approx(backward, abs=1e-14)
    assert float(total_variation(p, q)) == pytest.approx(0.5 * (0.6 + 0.1 + 0.5), abs=1e-14)
    assert float(l2_distance(p, q)) == pytest.approx(math.sqrt(0.36 + 0.01 + 0.25), abs=1e-14)


def test_batched_float32_matches_numpy_reference_with_any_leading_dims():
    generator = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 5, 17, generator=generator) * 3, torch.randn(3, 5, 17, generator=generator) * 3
    got = forward_kl(p, q)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), numpy_kl(p.numpy(), q.numpy()), rtol=1e-5, atol=1e-6)


def test_many_rows_span_several_chunks():
    generator = torch.Generator().manual_seed(1)
    p, q = torch.randn(5000, 256, generator=generator), torch.randn(5000, 256, generator=generator)
    np.testing.assert_allclose(
        forward_kl(p, q).numpy(), numpy_kl(p.numpy(), q.numpy()), rtol=1e-5, atol=1e-6
    )


def test_stable_for_large_and_spread_logits():
    p, q = torch.tensor([[1000.0, 999.0, 0.0]]), torch.tensor([[1000.0, 1001.0, -500.0]])
    np.testing.assert_allclose(forward_kl(p, q).numpy(), numpy_kl(p.numpy(), q.numpy()), rtol=1e-5)
    assert float(forward_kl(p + 1e4, q - 1e4)) == pytest.approx(float(forward_kl(p, q)), rel=1e-4)


def test_bfloat16_input_is_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    p, q = (
        torch.randn(64, 256, generator=generator).bfloat16(),
        torch.randn(64, 256, generator=generator).bfloat16(),
    )
    got = forward_kl(p, q)
    assert got.dtype == torch.float32
    # The reference sees exactly the bf16 values; the only error left is float32 arithmetic.
    np.testing.assert_allclose(
        got.numpy(), numpy_kl(p.double().numpy(), q.double().numpy()), rtol=1e-5, atol=1e-6
    )


def test_action_support_on_openvla_width_logits():
    generator = torch.Generator().manual_seed(3)
    p, q = torch.randn(2, 7, 32064, generator=generator), torch.randn(2, 7, 32064, generator=generator)
    sliced = numpy_kl(p[..., 31744:32000].numpy(), q[..., 31744:32000].numpy())
    np.testing.assert_allclose(forward_kl(p, q, "action").numpy(), sliced, rtol=1e-5)
    np.testing.assert_allclose(forward_kl(p, q, ActionTokenizer().bin_ids).numpy(), sliced, rtol=1e-5)
    np.testing.assert_allclose(forward_kl(p, q, "full").numpy(), numpy_kl(p.numpy(), q.numpy()), rtol=1e-5)
    assert not np.allclose(forward_kl(p, q, "full").numpy(), sliced, rtol=1e-2)


def test_resolve_support_rules():
    assert resolve_support("action", 32064) == OPENVLA_ACTION_SLICE == slice(31744, 32000)
    assert resolve_support("action", 32000) == slice(31744, 32000)
    assert resolve_support("action", 256) == slice(0, 256)
    assert resolve_support(None, 10) == resolve_support("full", 10) == slice(0, 10)
    assert resolve_support(range(48, 64), 64) == slice(48, 64)
    assert resolve_support(slice(3, None), 10) == slice(3, 10)
    with pytest.raises(ValueError, match="support"):
        resolve_support("action", 151936)
    with pytest.raises(ValueError, match="support"):
        resolve_support(slice(0, 300), 256)
    with pytest.raises(ValueError, match="support"):
        resolve_support("actions", 256)


def test_log_probs_are_normalised_over_the_support():
    logits = torch.randn(4, 7, 32064)
    lp = log_probs(logits, "action")
    assert lp.shape == (4, 7, 256) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4, 7))
    assert log_probs(logits, "action", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_support_log_softmax_keeps_the_compute_dtype_rules():
    generator = torch.Generator().manual_seed(5)
    wide = torch.randn(3, 2, 40, generator=generator, dtype=torch.float64)
    support = range(8, 24)
    reference = np.asarray(wide[..., 8:24].numpy())
    reference = reference - reference.max(-1, keepdims=True)
    reference = reference - np.log(np.exp(reference).sum(-1, keepdims=True))
    got = support_log_softmax(wide, support)
    assert got.dtype == torch.float64 and got.shape == (3, 2, 16)  # float64 stays float64
    np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=1e-12)
    half = wide.bfloat16()
    assert support_log_softmax(half, support).dtype == torch.float32  # 16-bit floats computed in float32
    assert torch.equal(support_log_softmax(half, support), torch.log_softmax(half[..., 8:24].float(), -1))
    # dtype= computes in that dtype (the probe's float32), which is not rounding a float64 result
    assert torch.equal(support_log_softmax(wide, support, dtype=torch.float32),
                       torch.log_softmax(wide[..., 8:24].float(), -1))
    # unchecked: a -inf logit is a masked column, not an error (log_probs refuses it)
    masked = torch.tensor([0.0, float("-inf"), 0.0], dtype=torch.float64)
    assert support_log_softmax(masked).tolist() == [-math.log(2), float("-inf"), -math.log(2)]
    with pytest.raises(ValueError, match="finite"):
        log_probs(masked)


def test_entropy_by_hand_against_categorical_and_with_masked_columns():
    logits = logits_of([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    by_hand = [-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)), math.log(3)]
    got = entropy(logits)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(by_hand, abs=1e-14)
    generator = torch.Generator().manual_seed(6)
    batch = torch.randn(4, 7, 32064, generator=generator)
    expected = torch.distributions.Categorical(logits=batch[..., OPENVLA_ACTION_SLICE]).entropy()
    torch.testing.assert_close(entropy(batch, "action"), expected)
    assert entropy(batch.bfloat16(), "action").dtype == torch.float32
    # 0 log 0 = 0: a -inf logit gives the entropy of the rest, where the unguarded formula gives NaN
    masked = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert float(entropy(masked)) == pytest.approx(math.log(2), abs=1e-7)
    log_p = torch.log_softmax(masked, -1)
    assert math.isnan(float(-(log_p.exp() * log_p).sum()))
    # and its gradient is finite there too: by hand, dH/dz_v = -p_v (log p_v + H), 0 on the masked column
    leaf = masked.clone().requires_grad_()
    entropy(leaf).sum().backward()
    assert leaf.grad.tolist() == [[0.0, 0.0, 0.0]]  # the uniform pair is at its maximum
    skewed = torch.tensor([[math.log(3.0), 0.0, float("-inf")]], requires_grad=True)
    entropy(skewed).sum().backward()
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert skewed.grad[0].tolist() == pytest.approx(
        [-0.75 * (math.log(0.75) + h), -0.25 * (math.log(0.25) + h), 0.0], abs=1e-6
    )
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"distribution at \(1,\)"):
            entropy(torch.tensor([[0.0, 1.0], [bad, 0.0]]))
    with pytest.raises(ValueError, match="no finite one"):
        entropy(torch.full((1, 3), float("-inf")))


def test_kl_from_cached_reference_terms():
    generator = torch.Generator().manual_seed(4)
    p, q = torch.randn(6, 7, 256, generator=generator), torch.randn(6, 7, 256, generator=generator)
    probs, neg_entropy = reference_terms(torch.log_softmax(p, -1))
    got = kl_from_reference_terms(probs, neg_entropy, torch.log_softmax(q, -1))
    np.testing.assert_allclose(got.numpy(), numpy_kl(p.numpy(), q.numpy()), rtol=1e-4, atol=1e-6)
    assert torch.all(kl_from_reference_terms(probs, neg_entropy, torch.log_softmax(p, -1)) == 0)


finite_logits = arrays(np.float64, st.integers(2, 12), elements=st.floats(-30, 30))


@settings(max_examples=150, deadline=None)
@given(finite_logits, st.data())
def test_properties_of_every_divergence(p, data):
    q = data.draw(arrays(np.float64, p.shape, elements=st.floats(-30, 30)))
    pt, qt = torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32)
    kl = float(forward_kl(pt, qt))
    tv = float(total_variation(pt, qt))
    assert kl >= 0.0 and float(reverse_kl(pt, qt)) >= 0.0
    assert 0.0 <= tv <= 1.0 + 1e-6
    assert 0.0 <= float(l2_distance(pt, qt)) <= math.sqrt(2) + 1e-6
    # Pinsker's inequality, up to the float32 rounding of the KL (about 1e-7 absolute when the logits are
    # of order 30): near p == q a tolerance on sqrt(kl / 2) would be far too tight.
    assert 2 * tv**2 <= kl + 1e-6
    for fn in (forward_kl, reverse_kl, total_variation, l2_distance):
        assert float(fn(pt, pt)) == 0.0
    # Entropy: torch.distributions' own formula is the reference; uniform is the maximum.
    assert float(entropy(pt)) == pytest.approx(float(torch.distributions.Categorical(logits=pt).entropy()), abs=1e-5)
    assert -1e-6 <= float(entropy(pt)) <= math.log(len(p)) + 1e-6
    # bfloat16 in, float32 arithmetic out: equal to the float64 KL of the same (rounded) values.
    pb, qb = pt.bfloat16(), qt.bfloat16()
    kl_bf16 = forward_kl(pb, qb)
    assert kl_bf16.dtype == torch.float32
    assert float(kl_bf16) == pytest.approx(
        float(numpy_kl(pb.double().numpy(), qb.double().numpy())), rel=1e-4, abs=1e-5
    )


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, total_variation, l2_distance])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("side", [0, 1])
def test_non_finite_logits_raise_naming_argument_and_value(fn, bad, side):
    good = torch.zeros(2, 3, 8)
    poisoned = good.clone()
    poisoned[1, 2, 5] = bad
    args = (poisoned, good) if side == 0 else (good, poisoned)
    with pytest.raises(ValueError) as error:
        fn(*args)
    message = str(error.value)
    assert "logits" in message and str(bad) in message and "(1, 2, 5)" in message


def test_shape_and_dtype_mismatches_raise():
    with pytest.raises(
        ValueError, match=r"base_logits and logits must have the same shape.*\(2, 4\).*\(2, 5\)"
    ):
        forward_kl(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"same dtype.*bfloat16"):
        forward_kl(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="base_logits must have a floating dtype"):
        forward_kl(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="base_logits must be a torch.Tensor"):
        forward_kl(np.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="vocabulary"):
        forward_kl(torch.zeros(()), torch.zeros(()))
