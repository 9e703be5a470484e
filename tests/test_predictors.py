"""Weight- and representation-space predictors against hand-worked values and independent formulas."""

import math

import numpy as np
import peft
import pytest
import torch
from torch import nn

from vla_cl.kl import (
    activation_change,
    collect_activations,
    diagonal_fisher,
    fisher_weighted_l2,
    linear_cka,
    lora_weight_deltas,
    parameter_snapshot,
    update_spectral_norm,
    weight_change_l1,
    weight_deltas,
)


def kernel_cka(x, y):
    """CKA in its kernel (HSIC) form with an explicit centring matrix: independent of the feature form."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return np.trace(k @ l) / math.sqrt(np.trace(k @ k) * np.trace(l @ l))


def test_cka_matches_the_kernel_form_and_its_invariances():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=generator), torch.randn(20, 8, generator=generator)
    assert linear_cka(x, y) == pytest.approx(kernel_cka(x.numpy(), y.numpy()), abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-12)  # isotropic scale, and a shift
    assert linear_cka(x, x * torch.tensor([1.0, 1.0, 1.0, 1.0, 20.0])) < 0.99  # anisotropic scaling is seen
    assert linear_cka(x.reshape(20, 5, 1), y) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_cka_rejects_bad_input():
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(4, 3), torch.randn(4, 3))


def test_weight_change_l1_by_hand():
    model = nn.Linear(3, 2)
    before = parameter_snapshot(model)
    with torch.no_grad():
        model.weight[0, 0] += 0.5
        model.bias[1] -= 0.25
    deltas = weight_deltas(model, before)
    assert weight_change_l1(deltas) == pytest.approx(0.75)
    assert weight_change_l1(deltas, normalize=True) == pytest.approx(0.75 / 8)
    with pytest.raises(ValueError, match="does not have"):
        weight_deltas(model, {"nope": torch.zeros(1)})


def test_fisher_weighted_l2_by_hand():
    deltas = {"w": torch.tensor([[3.0, -1.0]]), "b": torch.tensor([2.0])}
    fisher = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([0.5])}
    assert fisher_weighted_l2(deltas, fisher) == pytest.approx(1 * 9 + 2 * 1 + 0.5 * 4)
    with pytest.raises(ValueError, match="'b'"):
        fisher_weighted_l2(deltas, {"w": fisher["w"]})


def test_update_spectral_norm_by_hand():
    u, v = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 4.0])  # |u| |v| = 2 * 5
    deltas = {
        "a": torch.diag(torch.tensor([3.0, -1.0])),
        "b": torch.outer(u, v),
        "bias": torch.full((9,), 100.0),
    }
    assert update_spectral_norm(deltas) == pytest.approx(10.0)
    assert update_spectral_norm(deltas, reduce="sum") == pytest.approx(13.0)
    with pytest.raises(ValueError, match="matrix"):
        update_spectral_norm({"bias": torch.ones(3)})
    with pytest.raises(ValueError, match="reduce"):
        update_spectral_norm(deltas, reduce="mean")


def test_lora_deltas_reproduce_the_adapted_layer():
    torch.manual_seed(0)
    model = peft.get_peft_model(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    deltas = lora_weight_deltas(model)
    assert set(deltas) == {"base_model.model.0.base_layer.weight", "base_model.model.2.base_layer.weight"}
    layer = model.base_model.model[0]
    x = torch.randn(4, 6)
    # The adapted layer must act like a plain linear layer with weight W + delta.
    expected = torch.nn.functional.linear(
        x, layer.base_layer.weight + deltas["base_model.model.0.base_layer.weight"], layer.base_layer.bias
    )
    torch.testing.assert_close(layer(x), expected)
    # The Fisher of the frozen base weights at pi0 lines up with the deltas by name.
    with model.disable_adapter():
        fisher = diagonal_fisher(model, [torch.randn(4, 6)], params=list(deltas))
    assert not layer.base_layer.weight.requires_grad
    assert fisher_weighted_l2(deltas, fisher) > 0.0
    with pytest.raises(ValueError, match="LoRA"):
        lora_weight_deltas(nn.Linear(2, 2))


def test_diagonal_fisher_of_a_softmax_regression_matches_its_closed_form():
    # logits = W x: d log p_y / d W_kj = (1[y=k] - p_k) x_j, so E_y[.^2] = p_k (1 - p_k) x_j^2.
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False)
    x = torch.randn(8, 4)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    closed_form = torch.einsum("nk,nj->kj", p * (1 - p), x**2) / 8
    model.weight.requires_grad_(False)  # frozen, as a LoRA model's base weights are
    fisher = diagonal_fisher(
        model, [x[:5], x[5:]], params=["weight"], samples=300, generator=torch.Generator().manual_seed(1)
    )
    assert not model.weight.requires_grad
    torch.testing.assert_close(fisher["weight"], closed_form, rtol=0.12, atol=1e-3)
    with pytest.raises(ValueError, match="not parameters"):
        diagonal_fisher(model, [x], params=["nope"])
    with pytest.raises(ValueError, match="no trainable"):
        diagonal_fisher(model, [x])


def test_activation_change_by_hand():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 6))
    batches = [torch.randn(5, 3), torch.randn(2, 3)]
    before = collect_activations(model, ["0", "2"], batches)
    assert before["2"].shape == (7, 6)
    with torch.no_grad():
        model[2].bias += 1.0  # every output unit moves by exactly 1; layer 0 does not move
    after = collect_activations(model, {"0": model[0], "2": model[2]}, batches)
    assert activation_change(before, after, p=1) == pytest.approx(6.0)
    assert activation_change(before, after, p=2) == pytest.approx(math.sqrt(6.0))
    assert activation_change(before["0"], after["0"]) == 0.0
    with pytest.raises(ValueError, match="not found"):
        collect_activations(model, ["9"], batches)
    with pytest.raises(ValueError, match="p must"):
        activation_change(before, after, p=3)
