"""LIBERO and Continual World metrics, every value worked out by hand in the comments beside it."""

import json

import numpy as np
import pytest

from vla_cl.evaluation.continual import continual_metrics, training_curve_area

# Stage x task success: row i = evaluation after training stage i.
R = [
    [0.8, 0.1, 0.0],
    [0.6, 0.9, 0.2],
    [0.1, 0.7, 0.6],
]
# Curves of different lengths during each task's own stage (the last point is the end-of-stage evaluation).
DURING = [[0.0, 0.5, 1.0, 0.8], [0.3, 0.9], [0.6]]
REFERENCE = [[0.0, 0.2, 0.6, 0.8], [0.1, 0.5, 0.7], [0.8]]


def approx(values):
    return pytest.approx(values, abs=1e-12)


def test_libero_metrics_by_hand():
    m = continual_metrics(R, DURING)
    # c_kk = max(during[k]) = 1.0, 0.9, 0.6.
    # FWT_k = mean(during[k]) = 2.3 / 4, 1.2 / 2, 0.6 / 1.
    assert m.fwt_per_task == approx((0.575, 0.6, 0.6))
    assert m.fwt == approx((0.575 + 0.6 + 0.6) / 3)
    # NBT_0 = ((1.0 - 0.6) + (1.0 - 0.1)) / 2 = 0.65; NBT_1 = (0.9 - 0.7) / 1 = 0.2; undefined for the last task.
    assert m.nbt_per_task == (pytest.approx(0.65), pytest.approx(0.2), None)
    assert m.nbt == approx((0.65 + 0.2) / 2)
    # AUC_0 = (0.575 + 0.6 + 0.1) / 3 = 0.425; AUC_1 = (0.6 + 0.7) / 2 = 0.65; AUC_2 = FWT_2 = 0.6.
    assert m.auc_per_task == approx((0.425, 0.65, 0.6))
    assert m.auc == approx((0.425 + 0.65 + 0.6) / 3)


def test_continual_world_metrics_by_hand():
    m = continual_metrics(R, DURING, REFERENCE)
    # Average performance: mean of the final row (0.1 + 0.7 + 0.6) / 3.
    assert m.average_performance == approx(1.4 / 3)
    # Forgetting R[i, i] - R[2, i]: 0.8 - 0.1 = 0.7, 0.9 - 0.7 = 0.2, and 0 for the last task.
    assert m.cw_forgetting_per_task == approx((0.7, 0.2, 0.0))
    assert m.forgetting == approx((0.7 + 0.2) / 2)
    # Trapezoidal areas over a unit stage:
    #   run:       (0.0/2 + 0.5 + 1.0 + 0.8/2) / 3 = 1.9 / 3,  (0.3 + 0.9) / 2 = 0.6,         0.6
    #   reference: (0.0/2 + 0.2 + 0.6 + 0.8/2) / 3 = 0.4,      (0.1/2 + 0.5 + 0.7/2) / 2 = 0.45, 0.8
    # FT = (AUC - AUC_ref) / (1 - AUC_ref): (1.9/3 - 0.4) / 0.6 = 7/18, 0.15 / 0.55 = 3/11, -0.2 / 0.2 = -1.
    assert m.cw_forward_transfer_per_task == approx((7 / 18, 3 / 11, -1.0))
    assert m.forward_transfer == approx((7 / 18 + 3 / 11 - 1.0) / 3)


def test_libero_fwt_is_the_plain_mean_while_continual_world_uses_the_trapezoid():
    assert training_curve_area(DURING[0]) == approx(1.9 / 3)  # trapezoid
    assert continual_metrics(R, DURING).fwt_per_task[0] == approx(2.3 / 4)  # plain mean
    assert training_curve_area([0.3]) == 0.3


def test_the_last_task_is_left_out_of_nbt_and_forgetting():
    # The last task dropped from its best 1.0 to 0.2 within its stage: still neither NBT nor forgetting.
    m = continual_metrics([[0.5, 0.0], [0.3, 0.2]], [[0.5], [1.0, 0.2]])
    assert m.nbt_per_task == (pytest.approx(0.2), None)  # 0.5 - 0.3
    assert m.nbt == approx(0.2)
    assert m.cw_forgetting_per_task == approx((0.2, 0.0))
    assert m.forgetting == approx(0.2)  # not (0.2 + 0.0) / 2


def test_without_during_curves_the_end_of_stage_evaluation_is_the_only_point():
    m = continual_metrics(R)
    assert m.fwt_per_task == approx((0.8, 0.9, 0.6))  # the diagonal
    # NBT_0 = ((0.8 - 0.6) + (0.8 - 0.1)) / 2 = 0.45; NBT_1 = 0.9 - 0.7 = 0.2.
    assert m.nbt_per_task == (pytest.approx(0.45), pytest.approx(0.2), None)
    # AUC_0 = (0.8 + 0.6 + 0.1) / 3 = 0.5; AUC_1 = (0.9 + 0.7) / 2 = 0.8; AUC_2 = 0.6.
    assert m.auc_per_task == approx((0.5, 0.8, 0.6))
    assert m.forward_transfer is None and m.cw_forward_transfer_per_task is None


def test_a_single_task():
    m = continual_metrics([[0.7]], [[0.2, 0.7]], [[0.2, 0.4]])
    assert m.fwt == approx(0.45) and m.auc == approx(0.45)  # AUC_0 = FWT_0 = (0.2 + 0.7) / 2
    assert m.nbt is None and m.nbt_per_task == (None,)
    assert m.forgetting is None and m.cw_forgetting_per_task == (0.0,)
    assert m.average_performance == approx(0.7)
    # Run area (0.2 + 0.7) / 2 = 0.45, reference (0.2 + 0.4) / 2 = 0.3: FT = 0.15 / 0.7 = 3/14.
    assert m.forward_transfer == approx(3 / 14)


@pytest.mark.parametrize(
    "reference_0, transfer_0",
    [
        ([0.0, 0.0], 0.0),  # the reference never learns it either: (0 - 0) / 1
        ([0.4, 0.6], -1.0),  # the reference reaches area 0.5: (0 - 0.5) / 0.5
    ],
)
def test_a_task_never_learned(reference_0, transfer_0):
    m = continual_metrics([[0.0, 0.0], [0.0, 0.5]], [[0.0, 0.0, 0.0], [0.2, 0.5]], [reference_0, [0.5, 0.5]])
    assert m.nbt_per_task[0] == 0.0  # c_00 = 0, and 0 - 0 after stage 1
    assert m.fwt_per_task == approx((0.0, 0.35))
    assert m.cw_forgetting_per_task[0] == 0.0 and m.forgetting == 0.0
    # Task 1: run area (0.2 + 0.5) / 2 = 0.35, reference 0.5: (0.35 - 0.5) / 0.5 = -0.3.
    assert m.cw_forward_transfer_per_task == approx((transfer_0, -0.3))
    assert m.forward_transfer == approx((transfer_0 - 0.3) / 2)


def test_a_perfect_reference_leaves_forward_transfer_undefined_for_that_task():
    during = [[0.0, 0.0, 0.0], [0.2, 0.5]]
    m = continual_metrics([[0.0, 0.0], [0.0, 0.5]], during, [[1.0, 1.0, 1.0], [0.5, 0.5]])
    assert m.cw_forward_transfer_per_task == (None, pytest.approx(-0.3))
    assert m.forward_transfer == approx(-0.3)  # the mean over the defined tasks only
    everything_perfect = continual_metrics([[0.0, 0.0], [0.0, 0.5]], during, [[1.0], [1.0, 1.0]])
    assert everything_perfect.cw_forward_transfer_per_task == (None, None)
    assert everything_perfect.forward_transfer is None


def test_to_dict_is_json_friendly_and_keeps_none():
    as_dict = continual_metrics(R, DURING).to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["nbt_per_task"][2] is None
    assert as_dict["forward_transfer"] is None and as_dict["cw_forward_transfer_per_task"] is None
    assert as_dict["fwt_per_task"] == approx([0.575, 0.6, 0.6])


@pytest.mark.parametrize(
    "matrix, during, reference, match",
    [
        ([[0.1, 0.2]], None, None, r"matrix must be a non-empty square 2-D array.*\(1, 2\)"),
        ([0.5], None, None, "matrix must be a non-empty square 2-D array"),
        ([[0.5, 0.1], [0.2]], None, None, "matrix must be a K x K array"),
        (
            [[0.5, 0.1], [0.2, 0.3]],
            [[0.5], ["high"]],
            None,
            r"during\[1\] must be a 1-D array of success rates",
        ),
        (np.zeros((0, 0)), None, None, "matrix must be a non-empty square"),
        ([[0.5, 1.5], [0.2, 0.3]], None, None, r"matrix must hold finite success rates in \[0, 1\], got 1.5"),
        ([[0.5, 0.1], [-0.1, 0.3]], None, None, r"matrix .* got -0.1 at index \(1, 0\)"),
        ([[0.5, np.nan], [0.2, 0.3]], None, None, "matrix must hold finite success rates.*nan"),
        ([[0.5, 0.1], [0.2, 0.3]], [[0.5]], None, r"during must hold one curve per task \(K = 2.*got 1"),
        ([[0.5, 0.1], [0.2, 0.3]], [[0.5], []], None, r"during\[1\] must be a 1-D array with at least one"),
        ([[0.5, 0.1], [0.2, 0.3]], [[0.5], [[0.1, 0.2]]], None, r"during\[1\] must be a 1-D array"),
        ([[0.5, 0.1], [0.2, 0.3]], [[0.5], [0.1, 2.0]], None, r"during\[1\] must hold .* got 2.0 at index 1"),
        ([[0.5, 0.1], [0.2, 0.3]], None, [[0.5]] * 3, "reference_during must hold one curve per task"),
        ([[0.5, 0.1], [0.2, 0.3]], None, [[0.5], [np.inf]], r"reference_during\[1\] must hold finite"),
    ],
)
def test_invalid_input_names_the_argument(matrix, during, reference, match):
    with pytest.raises(ValueError, match=match):
        continual_metrics(matrix, during, reference)
