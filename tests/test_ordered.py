"""The order-aware predictors: Wasserstein-1 over bin values, the smoothed forward KL, the change of the mean action."""

import numpy as np
import pytest
import scipy.stats
import torch

from vla_cl.envs import make
from vla_cl.kl.compare import ORDERED_PREDICTORS, output_predictors
from vla_cl.kl.divergences import forward_kl
from vla_cl.kl.ordered import mean_action_change, smoothed_forward_kl, smoothing_kernel, wasserstein_1
from vla_cl.policies.base import ObsBatch
from vla_cl.policies.registry import get_policy_class

K = 32
VALUES = torch.linspace(-1.0, 1.0, K, dtype=torch.float64)


def point_mass(index: int, sharpness: float = 30.0) -> torch.Tensor:
    logits = torch.full((1, 1, K), -sharpness, dtype=torch.float64)
    logits[..., index] = 0.0
    return logits


def test_wasserstein_matches_scipy_on_random_distributions():
    rng = torch.Generator().manual_seed(0)
    base, logits = torch.randn(5, 3, K, generator=rng, dtype=torch.float64), torch.randn(5, 3, K, generator=rng,
                                                                                           dtype=torch.float64)
    values = torch.sort(torch.randn(3, K, generator=rng, dtype=torch.float64), dim=-1).values
    ours = wasserstein_1(base, logits, values)
    p, q = base.softmax(-1).numpy(), logits.softmax(-1).numpy()
    for i in range(5):
        for d in range(3):
            reference = scipy.stats.wasserstein_distance(values[d].numpy(), values[d].numpy(), p[i, d], q[i, d])
            assert ours[i, d].item() == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_moving_mass_one_bin_costs_little_and_across_the_range_a_lot_where_the_kl_cannot_tell():
    near, far, base = point_mass(11), point_mass(30), point_mass(10)
    gap = float(VALUES[1] - VALUES[0])
    assert forward_kl(base, near).item() == pytest.approx(forward_kl(base, far).item(), rel=1e-6)  # blind to order
    assert wasserstein_1(base, near, VALUES).item() == pytest.approx(gap, rel=1e-6)
    assert wasserstein_1(base, far, VALUES).item() == pytest.approx(20 * gap, rel=1e-6)
    assert mean_action_change(base, far, VALUES).item() == pytest.approx(20 * gap, rel=1e-6)
    assert smoothed_forward_kl(base, near, VALUES).item() < 0.2
    assert smoothed_forward_kl(base, far, VALUES).item() > 5.0


def test_sharpening_around_the_same_mode_raises_the_kl_but_hardly_moves_the_action():
    centre = torch.arange(K, dtype=torch.float64) - 15.5  # symmetric around the middle of the range
    base = (-(centre**2) / 40.0).view(1, 1, K)
    sharp = base * 8.0  # the same mode, far more peaked
    assert forward_kl(base, sharp).item() > 1.0
    assert mean_action_change(base, sharp, VALUES).item() < 1e-9
    assert wasserstein_1(base, sharp, VALUES).item() < 0.15
    assert smoothed_forward_kl(base, sharp, VALUES).item() < forward_kl(base, sharp).item()


def test_columns_are_ordered_by_their_values_not_their_position():
    rng = torch.Generator().manual_seed(1)
    base, logits = torch.randn(4, 2, K, generator=rng, dtype=torch.float64), torch.randn(4, 2, K, generator=rng,
                                                                                           dtype=torch.float64)
    shuffle = torch.randperm(K, generator=rng)
    for fn in (wasserstein_1, smoothed_forward_kl, mean_action_change):
        ordered = fn(base, logits, VALUES)
        shuffled = fn(base[..., shuffle], logits[..., shuffle], VALUES[shuffle])
        assert torch.allclose(ordered, shuffled, rtol=1e-10, atol=1e-12), fn.__name__


def test_identical_policies_are_zero_apart_and_the_kernel_keeps_mass_at_the_edges():
    logits = torch.randn(3, 7, K, dtype=torch.float64)
    for fn in (wasserstein_1, smoothed_forward_kl, mean_action_change):
        assert float(fn(logits, logits.clone(), VALUES).abs().max()) < 1e-12
    kernel = smoothing_kernel(K, 2.0)
    assert torch.allclose(kernel.sum(-1), torch.ones(K, dtype=torch.float64))
    assert kernel[0, 0] > kernel[K // 2, K // 2]  # renormalised over the bins inside the range
    assert kernel[0, 7] == 0.0 and kernel[0, 6] > 0.0  # cut at 3 sigma


def test_bad_values_and_sigma_are_refused_by_name():
    logits = torch.randn(2, 3, K)
    with pytest.raises(ValueError, match="values must be"):
        wasserstein_1(logits, logits, torch.zeros(2, K))
    with pytest.raises(ValueError, match="values must be finite"):
        wasserstein_1(logits, logits, torch.full((K,), float("nan")))
    with pytest.raises(ValueError, match="sigma"):
        smoothed_forward_kl(logits, logits, VALUES, sigma=0.0)
    bad = logits.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="logits must be finite"):
        wasserstein_1(logits, bad, VALUES)


def test_output_predictors_add_the_ordered_ones_summed_over_positions_only_with_values():
    base, logits = torch.randn(6, 3, K), torch.randn(6, 3, K)
    plain = output_predictors(base, logits, "new")
    assert not any(name.startswith(ORDERED_PREDICTORS) for name in plain)
    out = output_predictors(base, logits, "old", values=VALUES)
    assert {f"{name}_old" for name in ORDERED_PREDICTORS} <= set(out)
    expected = float(wasserstein_1(base, logits, VALUES).sum(-1).mean())
    assert out["w1_old"] == pytest.approx(expected, rel=1e-6)


def test_a_policys_action_values_are_what_its_sampled_tokens_decode_to():
    env = make("maniskill/PickCube-v1")
    policy = get_policy_class("state_token").for_task(state_dim=env.observation_space["state"].shape[-1],
                                                       action_stats=env.action_stats, preset="tiny", seed=0,
                                                       instructions=[env.task_spec.instruction], value_head=False)
    env.close()
    values = policy.action_values()
    assert values.shape == (policy.action_dim, len(policy.action_support))
    obs = ObsBatch([env.task_spec.instruction] * 64, torch.randn(64, policy.state_size), None)
    sample = policy.generate(obs, generator=torch.Generator().manual_seed(0))
    column = sample.tokens - policy.action_support.start
    looked_up = values.gather(1, column.T).T.numpy()
    np.testing.assert_allclose(looked_up, policy.tokenizer.unnormalize(sample.normalized), rtol=1e-12)


def test_the_razor_measures_the_ordered_and_on_policy_predictors_and_pi0_is_zero_apart_from_itself():
    from vla_cl.razor.measure import ONPOLICY_STREAM, Predictors, collect_probe, observed_options

    task = "maniskill/PickCube-v1"
    env = make(task)
    pi0 = get_policy_class("state_token").for_task(state_dim=env.observation_space["state"].shape[-1],
                                                    action_stats=env.action_stats, preset="tiny", seed=0,
                                                    instructions=[env.task_spec.instruction], value_head=False)
    env.close()
    options = observed_options(pi0)
    probe = collect_probe(pi0, task, 1, 0, **options)
    visited = []
    own = lambda policy: visited.append(policy) or collect_probe(policy, task, 1, 0, ONPOLICY_STREAM, **options)
    reference = Predictors(pi0, probe, probe, onpolicy=own)
    same = reference.measure(pi0)
    for name in ("forward_kl_new", "w1_new", "smooth_kl_old", "mean_action_new", "forward_kl_onpolicy"):
        assert same[name] == pytest.approx(0.0, abs=1e-9), name
    moved = get_policy_class("state_token").for_task(state_dim=pi0.state_size, action_stats=env.action_stats,
                                                      preset="tiny", seed=1, instructions=[env.task_spec.instruction],
                                                      value_head=False)
    other = reference.measure(moved)
    assert visited[-1] is moved  # the on-policy states are the measured policy's own
    assert min(other[n] for n in ("w1_new", "smooth_kl_new", "mean_action_old", "forward_kl_onpolicy")) > 0.0
