"""Plots and HTML tables of the forgetting law (``vla_cl.evaluation.law``), shared by the robot and LLM reports.

Each plot takes the analysis dict (``law.json``) and writes a PNG; the axis labels name what the experiment
measures (episode success for robots, benchmark accuracy for language models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_cl.kl.compare import ORDERED_PREDICTORS, PREDICTORS
from vla_cl.kl.ordered import SMOOTHING_SIGMA_BINS

FAMILY_COLORS = {"rl": "#1f77b4", "sft": "#d62728", "hybrid": "#9467bd", "budget": "#ff7f0e", "pi0": "#222222"}
FAMILIES = ("rl", "sft", "hybrid", "budget")  # pi0 is drawn on its own


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, ax, path: Path, legend: dict | None = None, grid: bool = True) -> None:
    """Legend, grid, layout, write the PNG and free the figure: how every plot of the reports ends."""
    if legend is not None:
        ax.legend(**legend)
    if grid:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_pareto(law: dict, path: Path, labels: dict[str, str], new_label: str = "new-task success (in-distribution)",
                retention_label: str = "mean success on the retention tasks") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pi0 = law["pi0"]
    ax.scatter([pi0["new_task_success"]], [pi0["mean_retention"]], marker="*", s=220, color="black", label="pi0",
               zorder=5)
    by_key = {p["key"]: p for p in law["points"]}
    for family in FAMILIES:
        points = [p for p in law["points"] if p["family"] == family]
        if not points:
            continue
        colour = FAMILY_COLORS[family]
        finals = [p for p in points if p["final"]]
        mids = [p for p in points if not p["final"]]
        ax.scatter([p["new_task_success"] for p in finals], [p["mean_retention"] for p in finals], color=colour,
                   label=f"{labels.get(family, family)} (final)")
        ax.scatter([p["new_task_success"] for p in mids], [p["mean_retention"] for p in mids], facecolors="none",
                   edgecolors=colour, label=f"{labels.get(family, family)} (mid-training)")
        front = [by_key[k] for k in law["pareto"].get(family, [])]
        ax.plot([pi0["new_task_success"], *[p["new_task_success"] for p in front]],
                [pi0["mean_retention"], *[p["mean_retention"] for p in front]], color=colour, alpha=0.6)
    ax.set_xlabel(new_label)
    ax.set_ylabel(retention_label)
    ax.set_title("Pareto frontier per method: learning vs keeping")
    save(fig, ax, path, legend={"fontsize": 7, "loc": "lower left"})


def plot_forgetting_vs_kl(law: dict, path: Path, labels: dict[str, str],
                          kl_label: str = "forward KL(pi0 || pi) on new-task states (nats per action)",
                          forgetting_label: str = "forgetting (mean drop in retention-task success)") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for family in FAMILIES:
        points = [p for p in law["points"] if p["family"] == family]
        if points:
            ax.scatter([p["forward_kl_new"] for p in points], [p["forgetting"] for p in points],
                       color=FAMILY_COLORS[family], label=labels.get(family, family), alpha=0.85)
    fit = law.get("fit_forward_kl_new")
    if fit:
        xs = np.linspace(0, max(p["forward_kl_new"] for p in law["points"]), 100)
        ax.plot(xs, np.polyval(fit["coefficients"], xs), color="black", lw=1,
                label=f"2nd-degree fit, R$^2$ = {fit['r2']:.2f}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(kl_label)
    ax.set_ylabel(forgetting_label)
    ax.set_title("Forgetting against the forward KL on the new task")
    save(fig, ax, path, legend={"fontsize": 8})


def measured_predictors(law: dict) -> list[str]:
    """The predictors some fine-tuned point of ``law`` has a value for, in registry order (a track leaves out the
    ones that do not apply to it: the order-aware ones where outputs have no order, the on-policy KL where it is
    not collected). pi0's own point is zero on every predictor by definition and does not count."""
    points = [point for point in law.get("points", []) if point.get("key") != "pi0"]
    return [n for n in PREDICTORS if any(point.get(n) is not None for point in points)]


def plot_r2(law: dict, path: Path, finals_label: str = "final policies only") -> None:
    plt = pyplot()
    names = measured_predictors(law)
    values = [law["r2"].get(n) if law["r2"].get(n) is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(6.4, max(4.8, 1.2 + 0.22 * len(names))))
    y = np.arange(len(names))
    colours = {"forward_kl_new": "#2ca02c", **{f"{o}_{i}": "#ff7f0e" for o in ORDERED_PREDICTORS for i in ("new", "old")}}
    ax.barh(y, values, color=[colours.get(n, "#7f7f7f") for n in names])
    ax.scatter([law["r2_final"].get(n) or 0.0 for n in names], y, color="black", s=12, zorder=3,
               label=finals_label)
    for key, style, label in (("noise_ceiling", "--", "noise ceiling (a perfect predictor)"),
                              ("noise_ceiling_final", ":", f"noise ceiling, {finals_label}")):
        ceiling = law.get(key)
        if ceiling:
            ax.axvline(ceiling["r2"], color="#1f77b4", ls=style, lw=1.2, label=f"{label}: {ceiling['r2']:.2f}")
            if key == "noise_ceiling":
                ax.axvspan(ceiling["r2_low"], ceiling["r2_high"], color="#1f77b4", alpha=0.12, lw=0)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, min(values)), 1.0)
    ax.set_xlabel("R$^2$ of a 2nd-degree fit of forgetting")
    ax.set_title("How well each predictor explains forgetting")
    save(fig, ax, path, legend={"fontsize": 8}, grid=False)


def r2_rows(law: dict, final_label: str, names: dict[str, str] | None = None) -> str:
    """The report's R^2 table as HTML: per predictor the in-sample R^2 over all points, how far it can be
    trusted (``law["r2_trust"]``: adjusted, leave-one-out, bootstrap interval, Spearman; the fit weighted by each
    point's sampling noise; absent in older ``law.json`` files) and the R^2 over final models. ``names``: a
    predictor's wording where its code name would mislead."""
    import html

    trust = lambda n, key, part=None: fmt(((law.get("r2_trust", {}).get(n) or {}).get(part) or {}).get(key)
                                          if part else (law.get("r2_trust", {}).get(n) or {}).get(key))
    rows = [[html.escape((names or {}).get(n, n)), fmt(law["r2"].get(n)), trust(n, "adjusted_r2"), trust(n, "loo_r2"),
             f"{trust(n, 'r2_low')} to {trust(n, 'r2_high')}", trust(n, "spearman"), trust(n, "r2", "weighted"),
             trust(n, "loo_r2", "weighted"), fmt(law["r2_final"].get(n))] for n in measured_predictors(law)]
    ceiling, final = law.get("noise_ceiling"), law.get("noise_ceiling_final")
    if ceiling:
        rows.append(["<b>noise ceiling</b> (a perfect predictor)", fmt(ceiling["r2"]), "", "",
                     f"{fmt(ceiling['r2_low'])} to {fmt(ceiling['r2_high'])} (90 % of noise draws)", "", "", "",
                     fmt(final["r2"]) if final else "n/a"])
    header = ["predictor", "all points", "adjusted", "leave-one-out", "95 % interval (bootstrap over points)",
              "Spearman", "weighted", "weighted leave-one-out", final_label]
    note = ("<p>A 3-parameter curve fitted to a few points: the adjusted and leave-one-out R<sup>2</sup>, the "
            "interval and the rank correlation say how far the in-sample R<sup>2</sup> can be trusted "
            "(<code>vla_cl.kl.fit.fit_trust</code>). <i>Weighted</i>: each point weighted by 1 / the binomial "
            "variance of its forgetting (<code>vla_cl.evaluation.law.forgetting_variance</code>), so points measured "
            "on fewer episodes count less. The paper's own R<sup>2</sup> values are not shown: this project could not "
            "check them against the paper's tables, row by row.</p>")
    words = law.get("noise_ceiling_words")
    ceiling_note = "" if not words else (
        f"<p><b>Can this experiment tell predictors apart?</b> {html.escape(words)} The ceiling is a parametric "
        "bootstrap of each point's own evaluation examples, episodes or benchmark items (<code>vla_cl.evaluation.law.noise_ceiling</code>).</p>")
    return table(header, rows) + "\n" + ceiling_note + note


def prediction_rows(law: dict, names: dict[str, str] | None = None) -> str:
    """The leave-one-run-out table of ``vla_cl.evaluation.prediction`` ("" when the law has none)."""
    import html

    loo = {n: t for n in measured_predictors(law) if (t := (law.get("prediction") or {}).get(n))}
    if not loo:
        return ""
    rows = [[html.escape((names or {}).get(n, n)), fmt(t["mae"]), f"{t['coverage']:.0%}", f"{t['points']} / {t['runs']}"]
            for n, t in loo.items()]
    best = min(loo, key=lambda n: loo[n]["mae"])
    return ("<h3>Predicting forgetting from the new task alone</h3><p>Each run held out in turn, the law (the "
            "quadratic above) fitted on the other runs predicts its points (<code>vla_cl.evaluation.prediction</code>"
            "; <code>vla-cl predict-forgetting</code> does the same for a new policy). The coverage is the share of "
            "held-out points inside their 95 % prediction interval: near 95 % the interval can be trusted, below it "
            f"the interval is too narrow. Lowest error: <code>{html.escape(best)}</code>.</p>"
            + table(["predictor", "mean absolute error", "coverage of the 95 % interval", "points / runs"], rows))


def ordered_note(law: dict) -> str:
    """A paragraph comparing the order-aware predictors with the paper's forward KL ("" where none was measured)."""
    names = [f"{o}_{i}" for i in ("new", "old") for o in ORDERED_PREDICTORS if f"{o}_{i}" in measured_predictors(law)]
    if not names:
        return ""
    r2 = law["r2"]
    parts = ", ".join(f"<code>{n}</code> {fmt(r2.get(n))}" for n in names)
    onpolicy = ("" if "forward_kl_onpolicy" not in measured_predictors(law) else
                f" The forward KL on states pi itself visits (<code>forward_kl_onpolicy</code>): "
                f"{fmt(r2.get('forward_kl_onpolicy'))}.")
    return ("<p><b>Ordered action bins.</b> The forward KL treats the 256 bins as unordered labels; the order-aware "
            "predictors see that they are ordered physical values (<code>vla_cl.kl.ordered</code>): Wasserstein-1 "
            "over the bin values (<code>w1</code>), the forward KL after Gaussian smoothing over "
            f"neighbouring bins (<code>smooth_kl</code>, sigma {SMOOTHING_SIGMA_BINS:g} bins) and the change of the "
            f"expected action (<code>mean_action</code>), in the policy's action units. R<sup>2</sup>: {parts}, "
            f"against <code>forward_kl_new</code> {fmt(r2.get('forward_kl_new'))}.{onpolicy}</p>")


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a report table ("n/a" when it could not be computed)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
