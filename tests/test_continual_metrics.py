"""LIBERO and Continual World metrics, every value worked out by hand in the comments beside it."""

import json

import numpy as np
import pytest

from vla_cl.evaluation.continual import best_checkpoint, continual_metrics, training_curve_area

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
    # FWT_k = mean(during[k]) = 2.3 / 4, 1.2 / 2, 0.6 / 1.
    assert m.fwt_per_task == approx((0.575, 0.6, 0.6))
    assert m.fwt == approx((0.575 + 0.6 + 0.6) / 3)
    # nbt: c_kk = R[k, k] = 0.8, 0.9, 0.6.
    # NBT_0 = ((0.8 - 0.6) + (0.8 - 0.1)) / 2 = 0.45; NBT_1 = (0.9 - 0.7) / 1 = 0.2; undefined for the last task.
    assert m.nbt_per_task == (pytest.approx(0.45), pytest.approx(0.2), None)
    assert m.nbt == approx((0.45 + 0.2) / 2)
    # nbt_inloop_max: LIBERO's literal c_kk = max(during[k]) = 1.0, 0.9, 0.6.
    # NBT_0 = ((1.0 - 0.6) + (1.0 - 0.1)) / 2 = 0.65; NBT_1 = (0.9 - 0.7) / 1 = 0.2.
    assert m.nbt_inloop_max_per_task == (pytest.approx(0.65), pytest.approx(0.2), None)
    assert m.nbt_inloop_max == approx((0.65 + 0.2) / 2)
    # AUC_0 = (0.575 + 0.6 + 0.1) / 3 = 0.425; AUC_1 = (0.6 + 0.7) / 2 = 0.65; AUC_2 = FWT_2 = 0.6.
    assert m.auc_per_task == approx((0.425, 0.65, 0.6))
    assert m.auc == approx((0.425 + 0.65 + 0.6) / 3)


def test_continual_world_metrics_by_hand():
    m = continual_metrics(R, DURING, REFERENCE)
    # Average performance: mean of the final row (0.1 + 0.7 + 0.6) / 3.
    assert m.average_performance == approx(1.4 / 3)
    # Forgetting R[i, i] - R[2, i]: 0.8 - 0.1 = 0.7, 0.9 - 0.7 = 0.2, and 0 for the last task.
    assert m.cw_forgetting_per_task == approx((0.7, 0.2, 0.0))
    # Continual World averages all N tasks, the last one's 0 included: (F0 + F1 + 0) / 3.
    assert m.forgetting == approx((0.7 + 0.2 + 0.0) / 3)
    assert m.forgetting_first_k_minus_1 == approx((0.7 + 0.2) / 2)
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


def test_the_last_task_is_left_out_of_nbt_and_counts_zero_in_forgetting():
    # The last task dropped from its best 1.0 to 0.2 within its stage: it adds no NBT and 0 forgetting.
    m = continual_metrics([[0.5, 0.0], [0.3, 0.2]], [[0.5], [1.0, 0.2]])
    assert m.nbt_per_task == (pytest.approx(0.2), None)  # 0.5 - 0.3
    assert m.nbt == approx(0.2) and m.nbt_inloop_max == approx(0.2)  # during[0] = [0.5] = R[0, 0]
    assert m.cw_forgetting_per_task == approx((0.2, 0.0))
    assert m.forgetting == approx((0.2 + 0.0) / 2)  # Continual World: all N tasks
    assert m.forgetting_first_k_minus_1 == approx(0.2)


def test_a_flat_noisy_curve_inflates_the_in_loop_max_but_not_nbt():
    # Task 0's success is flat around 0.5 during its stage; the in-loop points scatter by chance, and the
    # best checkpoint (at 0.7) evaluated on the suite gives R[0, 0] = 0.5. After stage 1 it still gives 0.5.
    r = [[0.5, 0.1], [0.5, 0.6]]
    m = continual_metrics(r, [[0.4, 0.6, 0.7, 0.3, 0.5], [0.2, 0.6]])
    assert m.nbt_per_task == (pytest.approx(0.0), None)  # c_00 = R[0, 0]: 0.5 - 0.5, nothing lost
    assert m.nbt_inloop_max_per_task == (pytest.approx(0.2), None)  # c_00 = max(during[0]) = 0.7: 0.7 - 0.5
    assert m.nbt == approx(0.0) and m.nbt_inloop_max == approx(0.2)
    # FWT_0 = mean(during[0]) = 2.5 / 5 = 0.5; AUC_0 = (FWT_0 + R[1, 0]) / 2 = 0.5, no c_kk in it.
    assert m.fwt_per_task == approx((0.5, 0.4)) and m.auc_per_task == approx((0.5, 0.4))
    assert m.forgetting == approx((0.0 + 0.0) / 2)  # R[0, 0] - R[1, 0] = 0; the last task 0


def test_continual_world_forgetting_averages_all_n_tasks():
    r = [
        [0.9, 0.0, 0.0],
        [0.5, 0.8, 0.1],
        [0.3, 0.2, 0.7],
    ]
    m = continual_metrics(r)
    # F_0 = 0.9 - 0.3 = 0.6, F_1 = 0.8 - 0.2 = 0.6, F_2 = 0.7 - 0.7 = 0.
    assert m.cw_forgetting_per_task == approx((0.6, 0.6, 0.0))
    assert m.forgetting == approx((0.6 + 0.6 + 0.0) / 3)  # 0.4
    assert m.forgetting_first_k_minus_1 == approx((0.6 + 0.6) / 2)  # 0.6


def test_the_best_checkpoint_is_the_highest_in_loop_success_the_earliest_on_ties():
    records = [
        {"iteration": 0, "eval/success_rate": 0.2},
        {"iteration": 1, "train/loss": 0.5},  # no evaluation in this iteration
        {"iteration": 2, "eval/success_rate": 0.6},
        {"iteration": 3, "eval/success_rate": None},
        {"iteration": 4, "eval/success_rate": 0.6},
        {"iteration": 5, "eval/success_rate": 0.4},
    ]
    assert best_checkpoint(records) == 2  # 0.6 at iterations 2 and 4: the earliest
    assert best_checkpoint(records[:1]) == 0
    flat = [{"iteration": i, "eval/success_rate": 0.0} for i in (0, 5, 10)]
    assert best_checkpoint(flat) == 0  # nothing better than the init: the init is handed on
    assert best_checkpoint([*flat, {"iteration": 12, "eval/success_rate": 0.1}]) == 12
    with pytest.raises(ValueError, match="records must hold at least one in-loop evaluation"):
        best_checkpoint([{"iteration": 1, "train/loss": 0.5}])


def test_without_during_curves_the_end_of_stage_evaluation_is_the_only_point():
    m = continual_metrics(R)
    assert m.fwt_per_task == approx((0.8, 0.9, 0.6))  # the diagonal
    # NBT_0 = ((0.8 - 0.6) + (0.8 - 0.1)) / 2 = 0.45; NBT_1 = 0.9 - 0.7 = 0.2.
    assert m.nbt_per_task == (pytest.approx(0.45), pytest.approx(0.2), None)
    assert m.nbt_inloop_max_per_task == m.nbt_per_task  # the only in-loop point is R[k, k]
    # AUC_0 = (0.8 + 0.6 + 0.1) / 3 = 0.5; AUC_1 = (0.9 + 0.7) / 2 = 0.8; AUC_2 = 0.6.
    assert m.auc_per_task == approx((0.5, 0.8, 0.6))
    assert m.forward_transfer is None and m.cw_forward_transfer_per_task is None


def test_a_single_task():
    m = continual_metrics([[0.7]], [[0.2, 0.7]], [[0.2, 0.4]])
    assert m.fwt == approx(0.45) and m.auc == approx(0.45)  # AUC_0 = FWT_0 = (0.2 + 0.7) / 2
    assert m.nbt is None and m.nbt_per_task == (None,)
    assert m.nbt_inloop_max is None and m.nbt_inloop_max_per_task == (None,)
    assert m.forgetting == 0.0 and m.cw_forgetting_per_task == (0.0,)  # the one (last) task: 0 by construction
    assert m.forgetting_first_k_minus_1 is None
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
    assert m.cw_forgetting_per_task[0] == 0.0 and m.forgetting == 0.0 and m.forgetting_first_k_minus_1 == 0.0
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
    assert as_dict["nbt_per_task"][2] is None and as_dict["nbt_inloop_max_per_task"][2] is None
    assert as_dict["forgetting"] == approx(0.3) and as_dict["forgetting_first_k_minus_1"] == approx(0.45)
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


@pytest.mark.parametrize(
    "how, successes, iteration, folder",
    [
        ("best", [0.2, 0.5, 0.7, 0.7, 0.1], 2, "stage/artifacts/snapshots/iter-000002"),  # a kept snapshot
        ("best", [0.3, 0.3, 0.1, 0.2, 0.3], 0, "init"),  # iteration 0: the stage's init policy
        ("best", [0.0, 0.1, 0.2, 0.3, 0.4], 4, "stage/artifacts/policy"),  # the last: the final policy
        ("final", [0.2, 0.5, 0.7, 0.7, 0.1], 4, "stage/artifacts/policy"),
    ],
)
def test_the_chosen_checkpoint_names_the_policy_of_its_iteration(tmp_path, how, successes, iteration, folder):
    from types import SimpleNamespace

    from vla_cl.evaluation.continual_command import choose_checkpoint
    from vla_cl.runs import RunDir

    stage = tmp_path / "stage"
    (stage / "artifacts" / "snapshots" / "iter-000002").mkdir(parents=True)
    lines = [{"iteration": i, "eval/success_rate": s} for i, s in enumerate(successes)]
    RunDir(stage, "train").metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    chosen = choose_checkpoint(stage, SimpleNamespace(iterations=4), str(tmp_path / "init"), how)
    assert chosen == {"iteration": iteration, "policy": str(tmp_path / folder), "success": successes[iteration]}


def test_a_best_checkpoint_whose_snapshot_was_not_kept_is_refused(tmp_path):
    from types import SimpleNamespace

    from vla_cl.evaluation.continual_command import choose_checkpoint
    from vla_cl.runs import RunDir

    stage = tmp_path / "stage"
    stage.mkdir()
    lines = [{"iteration": 0, "eval/success_rate": 0.0}, {"iteration": 1, "eval/success_rate": 0.5},
             {"iteration": 2, "eval/success_rate": 0.0}]
    RunDir(stage, "train").metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=r"iteration 1, but its policy .*iter-000001 was not kept"):
        choose_checkpoint(stage, SimpleNamespace(iterations=2), "init", "best")
