"""The ParityMNIST report: summary.json, the predictor R^2 table, and three plots.

R^2 is the paper's: forgetting fitted against each predictor with a 2nd-degree polynomial
(``vla_cl.kl.fit_forgetting``), 1 - SS_res / SS_tot on the fitted points. ``r2`` uses one point per run,
its final model; ``r2_checkpoints`` uses every evaluation of every run (several points per run, not
independent), for comparison.

"At matched new-task accuracy" compares Pareto frontiers: for an accuracy level a, a method's forgetting
is pi0's old-task accuracy minus the best old-task accuracy any of its evaluations reached with new-task
accuracy >= a (pi0 itself counts, so at levels pi0 already reaches forgetting is 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.kl import fit_forgetting
from vla_cl.kl.fit import binomial_ceiling, ceiling_words
from vla_cl.parity.evaluate import PREDICTORS
from vla_cl.parity.methods import METHODS, RL_METHODS

# The predictors the paper compares on ParityMNIST (listed first in the R^2 table). Its R^2 values are not
# reproduced: this project could not check them against the paper's tables, row by row.
PAPER_PREDICTORS = ("forward_kl_new", "reverse_kl_new", "tv_new", "l2_new", "weight_l1", "weight_fisher_l2",
                    "weight_spectral", "activation_l1", "activation_l2")
OUTCOMES = ("new_task_accuracy", "new_task_reward", "old_task_accuracy", "forgetting")
COLORS = {
    "grpo": "#1f77b4",
    "grpo_kl": "#17becf",
    "sft1": "#d62728",
    "sft2": "#ff7f0e",
    "oracle_sft": "#2ca02c",
    "distill": "#9467bd",
}
LABELS = {
    "grpo": "GRPO",
    "grpo_kl": "GRPO + KL",
    "sft1": "SFT-1",
    "sft2": "SFT-2",
    "oracle_sft": "oracle SFT",
    "distill": "SFT distilled from RL",
}


def run_entry(record: dict, batch_size: int, group_size: int, kl_coef: float) -> dict:
    """One run of summary.json: method, hyperparameters, final outcomes and every predictor."""
    method, final = record["method"], record["final"]
    hyper = {
        "lr": record["lr"],
        "epochs": record["epochs"],
        "schedule": record["schedule"],
        "seed": record["seed"],
        "batch_size": batch_size,
        "optimizer": "adam",
        "steps": record["steps"],
    }
    if method in RL_METHODS:
        hyper["group_size"] = group_size
    if method == "grpo_kl":
        hyper["kl_coef"] = kl_coef
    return {
        "run_id": record["run_id"],
        "method": method,
        "hyperparameters": hyper,
        **{key: final[key] for key in OUTCOMES},
        **{name: final[name] for name in PREDICTORS},
        "checkpoints": len(record["checkpoints"]),
        "seconds": round(record["seconds"], 3),
    }


def r2_table(points: list[dict]) -> dict[str, float | None]:
    """R^2 of the 2nd-degree fit of forgetting against each predictor (None where a fit is impossible)."""
    forgetting = [p["forgetting"] for p in points]
    table = {}
    for name in PREDICTORS:
        try:
            table[name] = fit_forgetting([p[name] for p in points], forgetting, degree=2).r2
        except ValueError:  # fewer than 3 distinct values, or forgetting constant
            table[name] = None
    return table


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (new, old) accuracy points no other point beats on both, by increasing new-task accuracy."""
    frontier: list[tuple[float, float]] = []
    for new, old in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not frontier or old > frontier[-1][1]:
            frontier.append((new, old))
    return frontier[::-1]


def forgetting_at(points: list[tuple[float, float]], pi0_old: float, level: float) -> float | None:
    reachable = [old for new, old in points if new >= level]
    return pi0_old - max(reachable) if reachable else None


def matched_accuracy(records: list[dict], pi0: dict, noise: float, n_levels: int = 3) -> dict[str, Any]:
    """Each method's frontier forgetting at ``n_levels`` new-task accuracies above pi0's that every method
    reaches, and the two comparisons the paper makes. ``noise`` is the resolution of a forgetting value
    (see ``summarize``); the ``_within_noise`` check allows oracle SFT that much above the least."""
    start = (pi0["new_task_accuracy"], pi0["old_task_accuracy"])
    points = {m: [start] for m in METHODS if any(r["method"] == m for r in records)}
    for record in records:
        points[record["method"]] += [
            (c["new_task_accuracy"], c["old_task_accuracy"]) for c in record["checkpoints"]
        ]
    ceiling = min(max(new for new, _ in pts) for pts in points.values())
    levels = (
        [float(a) for a in np.linspace(start[0], ceiling, n_levels + 1)[1:]] if ceiling > start[0] else []
    )
    table = {f"{a:.4f}": {m: forgetting_at(pts, start[1], a) for m, pts in points.items()} for a in levels}
    checks = {}
    if levels and {"sft1", "grpo"} <= set(points):
        checks["sft1_forgets_more_than_grpo"] = all(row["sft1"] > row["grpo"] for row in table.values())
    if levels and "oracle_sft" in points and len(points) > 1:
        others = [min(v for m, v in row.items() if m != "oracle_sft") for row in table.values()]
        oracle = [row["oracle_sft"] for row in table.values()]
        checks["oracle_sft_forgets_least"] = all(o <= least for o, least in zip(oracle, others))
        checks["oracle_sft_forgets_least_within_noise"] = all(
            o <= least + noise for o, least in zip(oracle, others)
        )
    return {"levels": table, "checks": checks}


def summarize(
    records: list[dict],
    pi0: dict,
    teacher: dict | None,
    sources: dict,
    finetune: Any,
    n_test_old: int,
    wall_seconds: float,
) -> dict:
    """Everything summary.json holds (see the module docstring); ``n_test_old`` sets the noise level of
    forgetting used by the matched-accuracy checks."""
    finals = [r["final"] for r in records]
    checkpoints = [c for r in records for c in r["checkpoints"]]
    r2 = r2_table(finals)
    fit = None
    if r2["forward_kl_new"] is not None:
        result = fit_forgetting(
            [p["forward_kl_new"] for p in finals], [p["forgetting"] for p in finals], degree=2
        )
        fit = {
            "predictor": "forward_kl_new",
            "coefficients": [float(c) for c in result.coefficients],
            "r2": result.r2,
        }
    # The standard error of an accuracy on n held-out images is at most 0.5 / sqrt(n).
    noise = 0.5 / math.sqrt(n_test_old)
    matched = matched_accuracy(records, pi0, noise)
    ceiling = binomial_ceiling([p["forgetting"] for p in finals], [p["old_task_accuracy"] for p in finals], n_test_old)
    return {
        "datasets": sources,
        "n_runs": len(records),
        "n_checkpoints": len(checkpoints),
        "wall_seconds": round(wall_seconds, 1),
        "pi0": pi0,
        "teacher": None
        if teacher is None
        else {k: teacher["final"][k] for k in (*OUTCOMES, "forward_kl_new")} | {"run_id": teacher["run_id"]},
        "r2": r2,
        "r2_checkpoints": r2_table(checkpoints),
        "r2_definition": "2nd-degree polynomial fit of forgetting against the predictor; 1 - SS_res/SS_tot on the "
        "fitted points. r2: one point per run (its final model); r2_checkpoints: every evaluation of every run.",
        "fit": fit,
        "noise_ceiling": ceiling,
        "noise_ceiling_checkpoints": binomial_ceiling(
            [p["forgetting"] for p in checkpoints], [p["old_task_accuracy"] for p in checkpoints], n_test_old),
        "noise_ceiling_words": ceiling_words(ceiling, r2),
        "matched_accuracy": {**matched, "noise": noise},
        "runs": [run_entry(r, finetune.batch_size, finetune.group_size, finetune.kl_coef) for r in records],
    }


def r2_rows(summary: dict) -> list[tuple[str, float | None, float | None]]:
    """(predictor, R^2 on final points, R^2 on all checkpoints) for every predictor, the paper's predictors first."""
    order = list(PAPER_PREDICTORS) + [name for name in PREDICTORS if name not in PAPER_PREDICTORS]
    return [(n, summary["r2"].get(n), summary["r2_checkpoints"].get(n)) for n in order]


def markdown(summary: dict) -> str:
    """report.md: datasets, the R^2 table, and the matched-accuracy comparison."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "# ParityMNIST: forgetting and its predictors",
        "",
        f"New task: {summary['datasets']['new_task']}.  ",
        f"Old task: {summary['datasets']['old_task']}.",
        "",
        (
            f"{summary['n_runs']} fine-tuning runs ({summary['n_checkpoints']} evaluations) in "
            f"{summary['wall_seconds']} s. pi0: new-task accuracy {summary['pi0']['new_task_accuracy']:.3f}, "
            f"old-task accuracy {summary['pi0']['old_task_accuracy']:.3f}."
        ),
        "",
        (
            "R^2 of a 2nd-degree fit of forgetting against each predictor (final model of each run; all "
            "checkpoints: every evaluation). The paper's own values are not shown: this project could not check "
            "them against the paper's tables, row by row."
        ),
        "",
        "| predictor | R^2 | R^2, all checkpoints |",
        "|---|---|---|",
        *(f"| {n} | {fmt(a)} | {fmt(b)} |" for n, a, b in r2_rows(summary)),
        *([(f"| noise ceiling (a perfect predictor) | {fmt(summary['noise_ceiling']['r2'])} | "
            f"{fmt((summary.get('noise_ceiling_checkpoints') or {}).get('r2'))} |")] if summary.get("noise_ceiling") else []),
        "",
        *([summary["noise_ceiling_words"] + " (Each old-task accuracy redrawn as Binomial(n, a) / n on the n held-out "
           "images: `vla_cl.evaluation.law.binomial_ceiling`.)", ""] if summary.get("noise_ceiling_words") else []),
        "Forgetting at matched new-task accuracy (Pareto frontiers):",
        "",
    ]
    levels = summary["matched_accuracy"]["levels"]
    if levels:
        methods = list(next(iter(levels.values())))
        lines += [
            "| new-task accuracy >= | " + " | ".join(LABELS[m] for m in methods) + " |",
            "|---" * (len(methods) + 1) + "|",
        ]
        lines += [f"| {a} | " + " | ".join(fmt(row[m]) for m in methods) + " |" for a, row in levels.items()]
    lines += [
        "",
        "Checks: " + ", ".join(f"{k} = {v}" for k, v in summary["matched_accuracy"]["checks"].items()),
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_forgetting_vs_kl(summary: dict, records: list[dict], path: Path) -> None:
    """Forgetting against forward KL on the new task: every run's final point, its checkpoints faintly, the fit."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    finals = [(r["method"], r["final"]["forward_kl_new"], r["final"]["forgetting"]) for r in records]
    zoom = max(float(np.quantile([kl for _, kl, _ in finals], 0.75)), 1e-3) * 1.1
    for ax, limit, title in ((axes[0], None, "all runs"), (axes[1], zoom, f"zoom: forward KL <= {zoom:.2g}")):
        for method, color in COLORS.items():
            mine = [r for r in records if r["method"] == method]
            if not mine:
                continue
            mids = [c for r in mine for c in r["checkpoints"][:-1]]
            ax.scatter(
                [c["forward_kl_new"] for c in mids],
                [c["forgetting"] for c in mids],
                s=8,
                alpha=0.25,
                color=color,
                linewidths=0,
            )
            ax.scatter(
                [r["final"]["forward_kl_new"] for r in mine],
                [r["final"]["forgetting"] for r in mine],
                s=22,
                color=color,
                label=LABELS[method],
                edgecolors="white",
                linewidths=0.4,
            )
        if summary["fit"] is not None:
            top = limit if limit is not None else max(kl for _, kl, _ in finals)
            xs = np.linspace(0.0, top, 200)
            ax.plot(
                xs,
                np.polyval(summary["fit"]["coefficients"], xs),
                color="black",
                lw=1.2,
                label=f"2nd-degree fit, R² = {summary['fit']['r2']:.2f}",
            )
        if limit is not None:
            ax.set_xlim(-0.02 * limit, limit)
            inside = [f for _, kl, f in finals if kl <= limit] or [0.0]
            ax.set_ylim(min(inside) - 0.02, max(inside) + 0.03)
        ax.set_xlabel("forward KL(π0 || π) on new-task inputs")
        ax.set_ylabel("forgetting (drop in old-task accuracy)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "ParityMNIST: forgetting vs forward KL (large dots: final models, small: mid-training)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(summary: dict, records: list[dict], path: Path) -> None:
    """New-task vs old-task accuracy of every evaluation, with each method's Pareto frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 5))
    pi0 = summary["pi0"]
    start = (pi0["new_task_accuracy"], pi0["old_task_accuracy"])
    for method, color in COLORS.items():
        mine = [c for r in records if r["method"] == method for c in r["checkpoints"]]
        if not mine:
            continue
        points = [(c["new_task_accuracy"], c["old_task_accuracy"]) for c in mine]
        ax.scatter(*zip(*points), s=9, alpha=0.3, color=color, linewidths=0)
        frontier = pareto_frontier(points + [start])
        ax.step(*zip(*frontier), where="pre", color=color, lw=1.8, label=LABELS[method])
    ax.scatter([start[0]], [start[1]], marker="*", s=160, color="black", zorder=5, label="π0")
    ax.set_xlabel("new-task (parity) accuracy")
    ax.set_ylabel("old-task accuracy")
    ax.set_title("Pareto frontiers: retention at matched new-task accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_r2(summary: dict, path: Path) -> None:
    """R^2 of every predictor, on final models and on every checkpoint."""
    plt = _pyplot()
    rows = r2_rows(summary)
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    finals = [0.0 if a is None else max(a, 0.0) for _, a, _ in rows]
    every = [0.0 if b is None else max(b, 0.0) for _, _, b in rows]
    ax.barh(y + 0.19, finals, height=0.38, color="#1f77b4", label="final models")
    ax.barh(y - 0.19, every, height=0.38, color="#b0b0b0", label="every checkpoint")
    for yy, value in zip(y, finals):
        ax.text(value + 0.01, yy + 0.19, f"{value:.2f}", va="center", fontsize=7)
    for yy, value in zip(y, every):
        ax.text(value + 0.01, yy - 0.19, f"{value:.2f}", va="center", fontsize=7, color="#555555")
    ceiling = summary.get("noise_ceiling")
    if ceiling:
        ax.axvline(ceiling["r2"], color="#1f77b4", ls="--", lw=1.2,
                   label=f"noise ceiling, final models: {ceiling['r2']:.2f}")
        ax.axvspan(ceiling["r2_low"], ceiling["r2_high"], color="#1f77b4", alpha=0.12, lw=0)
    ax.set_yticks(y)
    ax.set_yticklabels([name for name, *_ in rows], fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("R² of a 2nd-degree fit of forgetting")
    ax.set_title("Which predictor explains forgetting?", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(summary: dict, records: list[dict], folder: Path) -> list[Path]:
    paths = [folder / "forgetting_vs_kl.png", folder / "pareto.png", folder / "r2_predictors.png"]
    plot_forgetting_vs_kl(summary, records, paths[0])
    plot_pareto(summary, records, paths[1])
    plot_r2(summary, paths[2])
    return paths
