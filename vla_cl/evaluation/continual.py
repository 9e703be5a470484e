"""Continual-learning metrics from a stage x task success matrix, as LIBERO and Continual World define them.

Input: R, a K x K array with R[i, j] = success on task j evaluated after training stage i (stage i
trains task i; tasks are numbered in training order), i.e. of the policy that stage i hands on (in LIBERO,
and by default in ``vla-cl continual``, the stage's checkpoint with the best in-loop success:
:func:`best_checkpoint`). Optionally ``during[k]``: task k's success at the evaluation points taken during
its own training stage (e.g. 11 points, epochs 0, 5, ..., 50, in LIBERO). Without it,
``during[k] = [R[k, k]]``: a single point, the evaluation at the end of stage k.

Two families, from two papers (0-based indices below; the papers count from 1):

- LIBERO (Liu et al. 2023, "LIBERO: Benchmarking Knowledge Transfer for Lifelong Robot Learning",
  NeurIPS Datasets & Benchmarks, Sec. 5): FWT (forward transfer: how well each task is learned while it
  is trained), NBT (negative backward transfer: how much is lost afterwards), AUC (both together).
- Continual World (Wolczyk et al. 2021, "Continual World: A Robotic Benchmark For Continual Reinforcement
  Learning", NeurIPS, Sec. 3): average performance, forgetting, and forward transfer against a
  single-task reference run trained from scratch.

Two different "areas" appear and are kept apart on purpose: LIBERO's FWT_k is the plain mean of the
during-training points, as LIBERO defines it; Continual World's AUC_i is the trapezoidal area under the
during-training curve over a unit-length stage (``training_curve_area``), used for both the run and its
reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ContinualMetrics:
    """LIBERO and Continual World metrics of one continual run; per-task values in training order."""

    fwt: float  # LIBERO forward transfer, mean over tasks; higher is better
    nbt: float | None  # LIBERO negative backward transfer, c_kk = R[k, k], mean over the first K-1 tasks
    nbt_inloop_max: float | None  # the same with LIBERO's literal c_kk = max(during[k]); biased upward
    auc: float  # LIBERO area under the success curve, mean over all tasks; higher is better
    average_performance: float  # Continual World: mean final success, mean(R[K-1, :])
    forgetting: float  # Continual World forgetting, mean over all K tasks (the last one's 0 included)
    forgetting_first_k_minus_1: float | None  # the same F_i, mean over the first K-1 tasks; None when K == 1
    forward_transfer: float | None  # Continual World forward transfer; None without a reference
    fwt_per_task: tuple[float, ...]
    nbt_per_task: tuple[float | None, ...]  # None for the last task
    nbt_inloop_max_per_task: tuple[float | None, ...]  # None for the last task
    auc_per_task: tuple[float, ...]
    cw_forgetting_per_task: tuple[float, ...]  # 0.0 for the last task, by definition
    cw_forward_transfer_per_task: tuple[float | None, ...] | None  # None where AUC^ref == 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: floats, None and lists."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }


def _matrix(matrix: Any) -> np.ndarray:
    try:
        array = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"matrix must be a K x K array of success rates, got {matrix!r} ({error})"
        ) from error
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(
            f"matrix must be a non-empty square 2-D array (K stages x K tasks), got shape {array.shape}"
        )
    _check_rates("matrix", array)
    return array


def _check_rates(name: str, array: np.ndarray) -> None:
    bad = ~(np.isfinite(array) & (array >= 0.0) & (array <= 1.0))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        where = index[0] if len(index) == 1 else index
        raise ValueError(
            f"{name} must hold finite success rates in [0, 1], got {float(array[index])} at index {where}"
        )


def _curves(name: str, curves: Sequence[Any], k: int) -> list[np.ndarray]:
    count = len(curves) if hasattr(curves, "__len__") else repr(curves)
    if count != k:
        raise ValueError(f"{name} must hold one curve per task (K = {k} arrays), got {count}")
    checked = []
    for task, curve in enumerate(curves):
        try:
            array = np.asarray(curve, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}[{task}] must be a 1-D array of success rates, got {curve!r}") from error
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"{name}[{task}] must be a 1-D array with at least one evaluation, got shape {array.shape}"
            )
        _check_rates(f"{name}[{task}]", array)
        checked.append(array)
    return checked


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def training_curve_area(curve: Any) -> float:
    """Area under a success curve sampled at equally spaced points over a training stage of length 1.

    Trapezoidal rule: with m >= 2 points y_0..y_{m-1} spaced 1/(m-1) apart, (sum(y) - (y_0 + y_{m-1})/2)
    / (m - 1); with a single point, that point. In [0, 1] for rates in [0, 1]; 1 only if every point is 1.
    This is Continual World's AUC_i = (1/Delta) * integral of p_i(t) over task i's stage.
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.size == 1:
        return float(y[0])
    return float((y.sum() - (y[0] + y[-1]) / 2.0) / (y.size - 1))


def best_checkpoint(records: Sequence[Mapping[str, Any]], key: str = "eval/success_rate") -> int:
    """The iteration of the in-loop evaluation with the highest success, the earliest on ties (LIBERO's choice).

    ``records``: a training run's metrics lines (``RunDir.read_metrics()``), each with its ``iteration``;
    those without ``key`` (iterations that did not evaluate) are skipped. LIBERO (Liu et al. 2023) keeps,
    per stage, the checkpoint with the best success on the stage's task, continues the next stage from it and
    evaluates it later; the earliest of equals is the one with the fewest updates. A pure function of the
    finished stage's metrics, so that a resumed continual run chooses again what it chose before.
    """
    evaluated = [(record[key], record["iteration"]) for record in records if record.get(key) is not None]
    if not evaluated:
        raise ValueError(f"records must hold at least one in-loop evaluation (a record with {key!r} and its "
                         "iteration); the stage's training evaluated nothing (does it run without an env?)")
    best = max(value for value, _ in evaluated)
    return min(iteration for value, iteration in evaluated if value == best)


def libero_per_task(r: np.ndarray, during: list[np.ndarray]) -> tuple[list, list, list, list]:
    """LIBERO's per-task FWT_k, NBT_k (two variants) and AUC_k (Liu et al. 2023, Sec. 5), 0-based task k of K.

    FWT_k = mean(during[k]), as LIBERO: the plain mean of the in-loop points of stage k.
    NBT_k = 1/(K-1-k) * sum_{tau=k+1..K-1} (c_kk - R[tau, k]); undefined (None) for the last task, with
    two choices of c_kk, the success of the checkpoint kept after stage k:

    - ``nbt`` (the default): c_kk = R[k, k], the suite evaluation of that checkpoint after stage k, on the
      same seeds and episodes as the later R[tau, k] it is compared with: an unbiased estimate of its
      success, so a checkpoint that loses nothing has NBT_k about 0.
    - ``nbt_inloop_max``: LIBERO's literal c_kk = max(during[k]), the best in-loop point. The checkpoint is
      chosen by that same maximum, and the maximum of m noisy estimates exceeds the true success (winner's
      curse): for a flat curve at success 0.5, 11 points of 20 (50) episodes each overestimate it by about
      0.18 (0.11), and NBT_k by as much.

    AUC_k = 1/(K-k) * (FWT_k + sum_{tau=k+1..K-1} R[tau, k]); AUC_{K-1} = FWT_{K-1}. As in LIBERO, AUC uses
    no c_kk: stage k's own term is FWT_k, the later ones the evaluations after each later stage.
    Returns (FWT, NBT with c_kk = R[k, k], NBT with c_kk = max(during[k]), AUC), one value per task.
    """
    k_tasks = r.shape[0]
    fwt, nbt, nbt_inloop_max, auc = [], [], [], []
    for k in range(k_tasks):
        later = r[k + 1 :, k]  # task k evaluated after each later stage
        fwt_k = float(during[k].mean())
        fwt.append(fwt_k)
        nbt.append(float(np.mean(r[k, k] - later)) if later.size else None)
        nbt_inloop_max.append(float(np.mean(during[k].max() - later)) if later.size else None)
        auc.append(float((fwt_k + later.sum()) / (later.size + 1)))
    return fwt, nbt, nbt_inloop_max, auc


def cw_forgetting(r: np.ndarray) -> list[float]:
    """Continual World forgetting F_i = R[i, i] - R[K-1, i] (Wolczyk et al. 2021, Sec. 3).

    Success at the end of task i's own stage (of the policy the stage hands on) minus success at the end of
    the sequence. Continual World (``results_processing/tables.py``: ``calculate_forgetting_individual``,
    ``calculate_data_at_the_end``) smooths each end point over the last 5 evaluations, of 10 episodes each,
    of task i during its own stage and at the end of the sequence; here the in-loop evaluations cover only
    the stage's own task, so each end point is one suite evaluation (the suite's seeds and episodes, usually
    more than 10), which keeps both ends on the same episodes. The last task is evaluated right after its
    own stage, so its forgetting is 0 by construction.
    """
    return [float(r[i, i] - r[-1, i]) for i in range(r.shape[0])]


def cw_forward_transfer(during: list[np.ndarray], reference_during: list[np.ndarray]) -> list[float | None]:
    """Continual World forward transfer FT_i = (AUC_i - AUC_i^ref) / (1 - AUC_i^ref) (Wolczyk et al. 2021).

    AUC_i: ``training_curve_area(during[i])``, the continual run's curve on task i during stage i;
    AUC_i^ref: the same for a single-task run trained from scratch on task i. FT_i <= 1; negative when the
    continual run learns task i worse than from scratch. None when AUC_i^ref == 1 (the ratio is undefined:
    a reference that is perfect throughout leaves nothing to transfer).
    """
    transfer: list[float | None] = []
    for curve, reference in zip(during, reference_during):
        auc, auc_ref = training_curve_area(curve), training_curve_area(reference)
        if math.isclose(auc_ref, 1.0, rel_tol=0.0, abs_tol=1e-12):
            transfer.append(None)
        else:
            transfer.append((auc - auc_ref) / (1.0 - auc_ref))
    return transfer


def continual_metrics(
    matrix: Any, during: Sequence[Any] | None = None, reference_during: Sequence[Any] | None = None
) -> ContinualMetrics:
    """LIBERO and Continual World metrics of a K x K stage x task success matrix.

    ``matrix[i, j]``: success on task j after training stage i. ``during[k]``: task k's success at the
    evaluation points of its own stage (any number >= 1); default ``[matrix[k, k]]``. ``reference_during[k]``:
    the same curve for a single-task run from scratch on task k; without it forward transfer is None.
    Aggregates: FWT and AUC average all K tasks; NBT (both variants, see :func:`libero_per_task`) averages
    the first K-1 tasks (the last task has had no later stage to forget in) and is None when K == 1.
    ``forgetting`` averages F_i over all K tasks, the last one's 0 included, as Continual World reports it
    (so it is (K-1)/K times the mean over the tasks that could forget); ``forgetting_first_k_minus_1``
    averages the first K-1 (None when K == 1). Forward transfer averages the tasks whose FT_i is defined
    (AUC_i^ref < 1) and is None when none is.
    """
    r = _matrix(matrix)
    k_tasks = r.shape[0]
    if during is None:
        curves = [r[k, k : k + 1] for k in range(k_tasks)]  # one point: the evaluation after stage k
    else:
        curves = _curves("during", during, k_tasks)
    fwt, nbt, nbt_inloop_max, auc = libero_per_task(r, curves)
    forgetting = cw_forgetting(r)
    transfer = None
    if reference_during is not None:
        transfer = cw_forward_transfer(curves, _curves("reference_during", reference_during, k_tasks))
    return ContinualMetrics(
        fwt=float(np.mean(fwt)),
        nbt=_mean(nbt[:-1]),
        nbt_inloop_max=_mean(nbt_inloop_max[:-1]),
        auc=float(np.mean(auc)),
        average_performance=float(r[-1].mean()),
        forgetting=float(np.mean(forgetting)),
        forgetting_first_k_minus_1=_mean(forgetting[:-1]),
        forward_transfer=_mean(transfer) if transfer is not None else None,
        fwt_per_task=tuple(fwt),
        nbt_per_task=tuple(nbt),
        nbt_inloop_max_per_task=tuple(nbt_inloop_max),
        auc_per_task=tuple(auc),
        cw_forgetting_per_task=tuple(forgetting),
        cw_forward_transfer_per_task=tuple(transfer) if transfer is not None else None,
    )
