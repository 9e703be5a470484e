"""The LLM report: ``summary.json`` and ``report.html`` (plots in ``report_assets/``), laid out like the robot one.

Every retention number carries its source: the real benchmark through lm-eval, or the project's stand-in,
which the tables label as such. The robot report of the latest ``vla-cl razor`` run is linked when there is
one (and the robot report links here), so the two halves of the story sit side by side.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from vla_cl.evaluation.law import CEILING_KEYS
from vla_cl.evaluation.law_plots import (
    plot_forgetting_vs_kl,
    plot_pareto,
    plot_r2,
    pyplot,
    r2_rows,
    save,
    table,
)
from vla_cl.files import write_json_atomic, write_text_atomic
from vla_cl.llm_track.train import points_of
from vla_cl.runs import latest_report

ASSETS = "report_assets"
LABELS = {"rl": "GRPO (TRL)", "sft": "SFT (TRL)", "pi0": "pi0"}
# What the output divergences are on a language model (vla_cl.llm_track.kl.measure): along pi0's sampled
# responses, per response token, over the whole vocabulary; only the forward KL is the sequence-level divergence.
PREDICTOR_NAMES = {
    **{f"forward_kl_{s}": f"forward_kl_{s}: KL(pi0 || pi) of the responses' first kl_tokens tokens" for s in ("new", "old")},
    **{f"reverse_kl_{s}": f"reverse_kl_{s}: per-token KL(pi || pi0) along pi0's prefixes, summed" for s in ("new", "old")},
    **{f"tv_{s}": f"tv_{s}: per-token total variation along pi0's prefixes, mean" for s in ("new", "old")},
    **{f"l2_{s}": f"l2_{s}: per-token L2 distance along pi0's prefixes, mean" for s in ("new", "old")},
}


def kl_words(config: Any, mean_tokens: float | None) -> str:
    """What the probe's forward KL measures, in the report's words."""
    tokens = "" if mean_tokens is None else f"; pi0's probe responses averaged {mean_tokens:.1f} tokens"
    return (f"The forward KL is KL(pi0 || pi) summed over response tokens along responses sampled from pi0 (its own "
            f"distribution: temperature 1, no top-k/top-p and none of the model's generation settings) on held-out "
            f"new-task prompts, each response cut at kl_tokens = {config.kl_tokens} tokens{tokens}: the KL of "
            f"{config.kl_tokens}-token prefixes, a lower bound on the KL of whole responses (a prefix's divergence "
            "never exceeds the whole's). The reverse KL, TV and L2 are per-token divergences at each position "
            "along pi0's prefixes (summed over positions for the reverse KL, averaged for TV and L2), not "
            "divergences of whole responses.")


def plot_kl_during_training(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        done = json.loads((Path(r["folder"]) / "done.json").read_text())
        history = done["kl_history"]
        steps = [h["step"] for h in history]
        means = [h["forward_kl"] for h in history]
        errors = [h["forward_kl_se"] if h["forward_kl_se"] == h["forward_kl_se"] else 0.0 for h in history]
        ax.errorbar(steps, means, yerr=errors, marker="o", ms=3, capsize=2, label=r["key"],
                    linestyle="-" if r["method"] == "grpo" else "--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("KL(pi0 || pi) on new-task prompts (nats per response)")
    ax.set_title("Forward KL during training (KLCallback; +- 1 standard error)")
    save(fig, ax, path, legend={"fontsize": 7})


def page(config: Any, law: dict, pi0_result: dict, evaluations: dict[str, dict], runs: list[dict],
         timings: list[dict], razor: str | None, mean_tokens: float | None = None) -> str:
    e = html.escape
    finding = law["finding"]
    labels = {b: v.get("label", b) for b, v in pi0_result["retention"].items()}
    benchmarks = list(labels)
    header = ["model", "step", "new-task reward", *[e(labels[b]) for b in benchmarks], "forgetting",
              "forward KL (new) +- SE", "Monte-Carlo KL +- SE"]
    rows = [["pi0", "0", f"{pi0_result['new_task']['score']:.3f}",
             *[f"{pi0_result['retention'][b]['score']:.3f}" for b in benchmarks], "0", "0", "0"]]
    for p in law["points"]:
        kl = evaluations[p["key"]]["predictors"]["kl_new"]
        rows.append([e(p["key"].split("__")[0]), f"{p['checkpoint_step']}{' (final)' if p['final'] else ''}",
                     f"{p['new_task_success']:.3f}", *[f"{p['retention'][b]:.3f}" for b in benchmarks],
                     f"{p['forgetting']:+.3f}", f"{kl['forward_kl']:.4f} +- {kl['forward_kl_se']:.4f}",
                     f"{kl['monte_carlo_kl']:.4f} +- {kl['monte_carlo_kl_se']:.4f}"])
    matched_rows = []
    for family, entries in law["matched"]["families"].items():
        for r in entries:
            f = r.get("forgetting")
            matched_rows.append([e(LABELS.get(family, family)), f"{r['level']:.2f}",
                                 e(r.get("point", "")) if r["reached"] else "not reached",
                                 "" if not r["reached"] else f"{f['estimate']:+.3f} ({f['low']:+.3f} to {f['high']:+.3f})"])
    stand_ins = [labels[b] for b, v in pi0_result["retention"].items() if v.get("stand_in")]
    samples = "".join(f"<li><code>{e(s['id'])}</code>: {e(s['reply'])!s}</li>" for s in pi0_result["new_task"]["samples"])
    held = {True: "held", False: "reversed", None: "not resolved"}[finding.get("held")]
    link = f'<p>Robot half of the experiment: <a href="{e(razor)}">the razor report</a>.</p>' if razor else ""
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.88em}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             ".finding{border-left:5px solid #444;background:#f7f7f7;padding:0.6em 1em}img{max-width:100%}"
             ".warn{color:#a33}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RL's Razor on language models: {e(config.task.name)}</title>
<style>{style}</style></head><body>
<h1>RL's Razor on language models</h1>
<p>pi0 = <b>{e(config.model.name)}</b>, fine-tuned with LoRA on <b>{e(config.task.name)}</b> (reward:
{e(config.task.reward)}) by GRPO and SFT (TRL). Forgetting is the mean over retention benchmarks of pi0's score minus the
model's, items paired; intervals are 95 % paired bootstrap. {e(kl_words(config, mean_tokens))}</p>
{'<p class="warn">Stand-ins (the project' + "'" + f's own small data, not the benchmarks; not comparable to published scores): {e(", ".join(stand_ins))}.</p>' if stand_ins else ""}
{link}
<div class="finding"><b>Finding ({held}).</b> {e(finding['statement'])}</div>
<h2>Every model</h2>
{table(header, rows)}
<h2>Pareto frontier and the forgetting law</h2>
<img src="{ASSETS}/pareto.png" alt="Pareto frontier" width="620">
<img src="{ASSETS}/forgetting_vs_kl.png" alt="forgetting against forward KL" width="620">
<img src="{ASSETS}/kl_training.png" alt="forward KL during training" width="620">
<img src="{ASSETS}/r2.png" alt="R squared per predictor" width="620">
<h3>R<sup>2</sup> of each predictor (2nd-degree fit of forgetting)</h3>
{r2_rows(law, "final models", PREDICTOR_NAMES)}
<h3>Forgetting at matched new-task reward</h3>
{table(["method", "new-task reward at least", "least-forgetting model", "forgetting vs pi0 (95 % CI)"], matched_rows)}
<h2>pi0's replies (first held-out examples)</h2><ul>{samples}</ul>
<h2>Stage timings</h2>
{table(["stage", "seconds"], [[e(t["stage"]), f"{t['seconds']:.0f}"] for t in timings])}
</body></html>
"""


def write(config: Any, law: dict, pi0_result: dict, runs: list[dict], run_dir: Any) -> dict:
    assets = run_dir.path / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    plot_pareto(law, assets / "pareto.png", LABELS, "new-task reward (held-out, greedy)", "mean retention score")
    plot_forgetting_vs_kl(law, assets / "forgetting_vs_kl.png", LABELS,
                          "forward KL(pi0 || pi) on new-task prompts (nats per response)",
                          "forgetting (mean drop in retention score)")
    plot_r2(law, assets / "r2.png", "final models only")
    plot_kl_during_training(runs, assets / "kl_training.png")
    evaluations = {p["key"]: json.loads((run_dir.path / "evaluation" / f"{p['key']}.json").read_text())
                   for p in points_of(runs)}
    timings = [{"stage": p.parent.name, "seconds": json.loads(p.read_text())["seconds"]}
               for p in sorted(run_dir.path.glob("*/stage.json"), key=lambda p: p.stat().st_mtime)]
    razor = latest_report("razor", run_dir.path)
    razor_link = os.path.relpath(razor, run_dir.path) if razor else None
    summary = {"model": config.model.name, "new_task": config.task.name, "pi0": law["pi0"], "points": law["points"],
               "retention_sources": {b: {"label": v.get("label"), "stand_in": v.get("stand_in")}
                                     for b, v in pi0_result["retention"].items()},
               "forward_kl": {k: v["predictors"]["kl_new"] for k, v in evaluations.items()},
               "r2": law["r2"], "r2_final_only": law["r2_final"], "r2_trust": law.get("r2_trust"),
               **{key: law.get(key) for key in CEILING_KEYS}, "pareto": law["pareto"], "matched": law["matched"],
               "finding": law["finding"], "razor_report": razor_link,
               "config": json.loads(json.dumps(config, default=lambda o: getattr(o, "__dict__", str(o))))}
    probes = run_dir.path / "probes" / "stage.json"
    mean_tokens = json.loads(probes.read_text())["result"].get("new_mean_tokens") if probes.exists() else None
    summary["kl_probe"] = {"kl_tokens": config.kl_tokens, "new_mean_tokens": mean_tokens,
                           "meaning": kl_words(config, mean_tokens)}
    write_json_atomic(run_dir.path / "summary.json", summary)
    write_text_atomic(run_dir.path / "report.html", page(config, law, pi0_result, evaluations, runs, timings, razor_link,
                                                         mean_tokens))
    return {"report": str(run_dir.path / "report.html")}
