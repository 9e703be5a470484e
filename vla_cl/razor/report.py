"""The razor report: the analysis (``law.json``), ``summary.json``, plots, rollout videos and ``report.html``.

``report.html`` is one page that opens from disk: its images and videos live in ``report_assets/`` beside it
and are referenced relatively, so the run folder (or just the page and that folder) can be zipped and
mailed. Videos are WebM/VP9, which every browser plays (Debian's Chromium may lack H.264).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.evaluation.law import CEILING_KEYS
from vla_cl.evaluation.law_plots import (
    fmt,
    measured_predictors,
    ordered_note,
    plot_forgetting_vs_kl,
    plot_pareto,
    plot_r2,
    prediction_rows,
    r2_rows,
    table,
)
from vla_cl.evaluation.results import read_result
from vla_cl.evaluation.suite import AXES
from vla_cl.files import write_json_atomic, write_text_atomic
from vla_cl.kl.compare import PREDICTORS
from vla_cl.razor import law as L
from vla_cl.razor.config import Trial
from vla_cl.razor.measure import policies_of
from vla_cl.runs import latest_report

ASSETS = "report_assets"
FAMILY_LABELS = {"rl": "RL (PPO / REINFORCE)", "sft": "SFT", "hybrid": "hybrids (SFT+KL, distill)",
                 "budget": "KL-budgeted (RL, SFT)", "pi0": "pi0"}


# ------------------------------------------------------------------------------------------ analysis


def _points(config: Any, trials: list[dict], evaluations: Path, measured: Path) -> tuple[L.Point, list[L.Point]]:
    tasks = config.retention_suite().task_ids
    pi0_result = read_result(evaluations / "pi0")
    zero = {name: 0.0 for name in PREDICTORS} | {"cka": 1.0, "cka_old": 1.0}
    pi0 = L.make_point("pi0", "pi0", "pi0", "", 0, True, pi0_result, pi0_result, config.new_task, tasks, zero)
    points = []
    for entry in policies_of(trials):
        predictors = json.loads((measured / "predictors" / f"{entry['key']}.json").read_text())
        points.append(L.make_point(entry["key"], entry["method"], entry["family"], entry["setting"], entry["step"],
                                   entry["final"], read_result(evaluations / entry["key"]), pi0_result,
                                   config.new_task, tasks, predictors))
    return pi0, points


def budgeted_arms(points: list[L.Point], trials: list[dict], tasks: list[str]) -> list[dict]:
    """Each KL-budgeted final policy (``kl_budgets``): its budget as its run kept it, the data it used, and where
    it stands against RL's final policies: the RL policy with the nearest new-task success at or above its own,
    with the paired retention difference (RL minus budgeted, 95 % interval: > 0 means RL kept more)."""
    runs = {Trial(**entry["trial"]).id: json.loads((Path(entry["folder"]) / "summary.json").read_text())
            for entry in trials}
    rl = [p for p in points if p.final and p.family == "rl"]
    out = []
    for point in (p for p in points if p.final and p.family == "budget"):
        run = runs[point.key.split("__")[0]]
        above = [q for q in rl if q.new_success >= point.new_success - 1e-12]
        rival = min(above, key=lambda q: (q.new_success, q.forgetting)) if above else None
        difference = None if rival is None else L.paired_difference(rival.result, point.result, tasks)
        out.append({"key": point.key, "method": point.method, "setting": point.setting,
                    "new_task_success": point.new_success, "forgetting": point.forgetting, **run["kl_budget"],
                    "env_steps": run["env_steps"], "samples": run["samples"],
                    "rl_rival": None if rival is None else {"key": rival.key, "new_task_success": rival.new_success,
                                                            "forgetting": rival.forgetting,
                                                            "retention_rl_minus_budgeted": difference.to_dict()}})
    return out


def budget_words(arms: list[dict]) -> str:
    """The report's paragraph on the budgeted arms ("" without any)."""
    if not arms:
        return ""
    parts = []
    for a in arms:
        trace = (f"probe KL at most {a['max_kl']:.3f} of its budget {a['budget']:g} nats per action "
                 f"({a['rejected']} update(s) undone, final beta {a['final_coef']:.3g})")
        data = (f"{a['env_steps']:,} env steps of its own" if a["method"] != "sft_budget" else
                f"{a['samples']:,} demonstration steps")
        rival = a["rl_rival"]
        if rival is None:
            versus = "no RL final policy reaches its new-task success"
        else:
            d = rival["retention_rl_minus_budgeted"]
            side = ("RL kept more" if d["low"] > 0 else "it kept more than RL" if d["high"] < 0 else
                    "not resolved: the interval contains 0")
            versus = (f"against {html.escape(rival['key'].replace('__', ' '))} (new task "
                      f"{rival['new_task_success']:.0%}), RL's retention minus its own {d['estimate']:+.3f} "
                      f"({d['low']:+.3f} to {d['high']:+.3f}): {side}")
        parts.append(f"<li><b>{html.escape(a['key'].replace('__', ' '))}</b>: new task {a['new_task_success']:.0%}, "
                     f"forgetting {a['forgetting']:+.3f}; {trace}; trained on {data}; {versus}.</li>")
    return ("<p><b>KL-budgeted arms</b> (<code>kl_budget</code>, PPO's adaptive KL coefficient with over-budget "
            "updates undone, <code>vla_cl.updaters.budget</code>). Budgeted SFT is on RL's frontier where no RL "
            "final policy reaches its new-task success while keeping more:</p><ul>" + "".join(parts) + "</ul>")


def analyse(config: Any, pi0_folder: str, trials: list[dict], evaluations: Path, measured: Path,
            folder: Path) -> dict:
    """Fits, frontiers, matched comparisons and the finding (see ``vla_cl.razor.law``); written to law.json."""
    tasks = config.retention_suite().task_ids
    pi0, points = _points(config, trials, evaluations, measured)
    finals = [p for p in points if p.final]
    levels = [round(pi0.new_success + d, 2) for d in (0.1, 0.2, 0.3, 0.4) if pi0.new_success + d <= 1.0]
    out = {
        **L.analyse(pi0, points, tasks, levels),
        "budgeted": budgeted_arms(points, trials, tasks),
        "new_task": config.new_task,
        "episodes": {"final": points and finals[0].result.cell(config.new_task).episodes,
                     "snapshot": next((p.result.cell(config.new_task).episodes for p in points if not p.final), None)},
        "retention_modes": retention_modes(pi0, finals, tasks, evaluations.parent / "evaluation_greedy"),
    }
    write_json_atomic(folder / "law.json", out)
    for name in ("forward_kl_new", *[n for n in measured_predictors(out) if n != "forward_kl_new"]):
        value, trust = out["r2"][name], out["r2_trust"].get(name)
        print(f"[razor]   R^2 {name}: {'n/a' if value is None else f'{value:.3f}'}"
              + (f" (leave-one-out {fmt(trust['loo_r2'])}, 95 % interval {fmt(trust['r2_low'])} to "
                 f"{fmt(trust['r2_high'])}, Spearman {fmt(trust['spearman'])}; {trust['n']} points)" if trust else ""),
              flush=True)
    print(f"[razor]   {out['noise_ceiling_words']}", flush=True)
    print(f"[razor]   {out['finding']['statement']}", flush=True)
    return out


def retention_modes(pi0: L.Point, finals: list[L.Point], tasks: list[str], greedy: Path) -> dict[str, Any] | None:
    """Per final policy, forgetting per retention task and its mean, from sampled actions (the suite's
    evaluation) and from greedy ones (``greedy/<key>``, when that stage ran), each with paired intervals
    (``vla_cl.evaluation.retention``)."""
    from vla_cl.evaluation.retention import retention

    if not (greedy / "pi0" / "result.json").exists():
        return None
    base = read_result(greedy / "pi0")
    out = {"pi0": {"sampled": pi0.retention, "greedy": {t: base.success(t) for t in tasks}}, "policies": {}}
    for p in finals:
        out["policies"][p.key] = {"sampled": retention(pi0.result, p.result, tasks).to_dict(),
                                  "greedy": retention(base, read_result(greedy / p.key), tasks).to_dict()}
    return out


# ------------------------------------------------------------------------------------------ the setting


def setting(config: Any) -> dict[str, Any]:
    """What the experiment ran on, in the report's words: the policy, its observations, pi0's warm-up, and the
    scenes' stand-ins (a Bridge scene built without some of its asset files is not SimplerEnv's)."""
    from vla_cl.envs import get_spec
    from vla_cl.envs.assets import asset_root

    pre = config.pretrain_config(None)
    policy = config.policy + (f" from {config.init}" if config.init else "") + (
        " (toy size, random weights)" if config.policy_preset == "tiny" else "")
    observes = "the state vector" if pre.obs_mode == "state" else (
        f"{pre.side} px camera images" + (" and the state" if pre.obs_mode == "both" else ""))
    camera = ("each task's own camera" if config.camera_size is None else
              f"cameras rendered {config.camera_size} px wide (not SimplerEnv's 640x480 protocol)")
    stand_ins = []
    for task in dict.fromkeys([*config.prior_tasks, config.new_task]):
        if task.startswith("simpler/"):
            from vla_cl.envs.bridge import TASKS_BY_ID, find_gaps

            stand_ins += find_gaps(TASKS_BY_ID[task], asset_root()).messages(task)
    warmup = (f"{config.new_task_warmup} demonstrations of the new task were part of pi0's warm-up"
              if config.new_task_warmup else "pi0 saw no demonstration of the new task")
    return {"policy": policy, "observes": observes, "camera": camera, "warmup": warmup, "stand_ins": stand_ins,
            "max_episode_steps": {t: get_spec(t).max_episode_steps for t in [*config.prior_tasks, config.new_task]}}


def starts_note(results: dict[str, Any], tasks: list[str]) -> str:
    """How many distinct initial states pi0's in-distribution cells covered, where starts repeated."""
    cells = [results["pi0"].get((t, "in_distribution")) for t in tasks]
    repeated = [c for c in cells if c and c.get("distinct_initial_states", c["episodes"]) < c["episodes"]]
    if not repeated:
        return "Every episode started from a distinct initial state."
    listed = ", ".join(f"{html.escape(c['task'])}: {c['episodes']} episodes over {c['distinct_initial_states']} "
                       "initial states" for c in repeated)
    return (f"These scenes start from a finite set of initial states, so episodes repeat starts ({listed}; the "
            "position axis draws every start afresh). A rate's interval is over episodes: the policy's own sampling "
            "and the draw of starts from that set, not over as many distinct situations as episodes.")


# ------------------------------------------------------------------------------------------ plots


# ------------------------------------------------------------------------------------------ videos


def record_video(policy_folder: str, task: str, seed: int, size: int, path: Path, env_options: dict | None = None,
                 device: str = "cpu") -> dict:
    """One episode of a saved policy on ``task`` from reset seed ``seed``, captioned, as WebM."""
    import torch

    from vla_cl.envs import make
    from vla_cl.envs.video import record, write_video
    from vla_cl.policies.registry import load_policy_on
    from vla_cl.razor.measure import observed_options
    from vla_cl.updaters.data import PolicyActor

    policy = load_policy_on(policy_folder, device).eval()
    env = make(task, **observed_options(policy), **(env_options or {}), render_size=size)
    try:
        actor = PolicyActor(policy, torch.Generator().manual_seed(seed), device=policy_device(policy))
        ((episode, frames),) = record(env, actor, 1, seed)
    finally:
        env.close()
    write_video(frames, path, fps=10)
    return {"file": f"{ASSETS}/{path.name}", "success": bool(episode.success), "length": int(episode.length),
            "instruction": episode.instruction, "seed": seed}


def policy_device(policy: Any) -> Any:
    return next(policy.parameters()).device


def videos(config: Any, pi0: str, law: dict, trials: list[dict], assets: Path) -> list[dict]:
    folders = {e["key"]: e["folder"] for e in policies_of(trials)}
    finding = law["finding"]
    chosen = {family: (finding.get(f"{family}_models") or [None])[0] for family in ("rl", "sft")}
    who = [("pi0", pi0)]
    for name, key in (("best RL", chosen["rl"]), ("best SFT", chosen["sft"])):
        if key:
            who.append((f"{name} ({key.replace('__', ' ')})", folders[key]))
    points = {p["key"]: p for p in law["points"]}
    tasks = law["retention_tasks"]
    gap = lambda t: abs(points[chosen["rl"]]["retention"][t] - points[chosen["sft"]]["retention"][t]) \
        if chosen["rl"] and chosen["sft"] else 0.0
    retained = max(tasks, key=gap)  # the retention task where the two differ most
    seed = config.retention_suite().seeds[0]
    out = []
    for label, folder in who:
        for task in (config.new_task, retained):
            name = f"{label.split(' (')[0].replace(' ', '_')}__{task.split('/')[-1]}.webm"
            entry = record_video(folder, task, seed, config.video_size, assets / name, config.rollout_options(),
                                 config.device)
            out.append({"policy": label, "task": task, **entry})
            print(f"[razor]   video {name}: {'success' if entry['success'] else 'failure'} in {entry['length']} steps",
                  flush=True)
    return out


# ------------------------------------------------------------------------------------------ the page


def _pct(cell: dict | None) -> str:
    if cell is None:
        return ""
    if not cell.get("applicable", True):
        return "n/a"
    low, high = cell["ci95"]
    return f"{cell['success_rate']:.0%} <small>({low:.0%}-{high:.0%})</small>"


def page(config: Any, law: dict, results: dict[str, Any], clips: list[dict], timings: list[dict],
         parity_r2: float | None, llm_report: str | None = None) -> str:
    e = html.escape
    tasks, new = law["retention_tasks"], law["new_task"]
    finding = law["finding"]
    finals = [p for p in law["points"] if p["final"]]
    names = {"pi0": "pi0", **{p["key"]: p["key"].replace("__", " ") for p in law["points"]}}
    success_rows = []
    for key in ["pi0", *[p["key"] for p in finals]]:
        summary = results[key]
        success_rows.append([e(names[key]), *[_pct(summary.get((t, "in_distribution"))) for t in [*tasks, new]]])
    axis_rows = []
    for key in ["pi0", *[p["key"] for p in finals]]:
        summary = results[key]
        row = [e(names[key])]
        for axis in AXES:
            row.append(_pct(summary.get((new, axis))))
        for axis in AXES:
            cells = [summary.get((t, axis)) for t in tasks]
            usable = [c for c in cells if c is not None and c.get("applicable", True)]
            row.append("n/a" if not usable else f"{np.mean([c['success_rate'] for c in usable]):.0%}")
        axis_rows.append(row)
    matched_rows = []
    for family, rows in law["matched"]["families"].items():
        for r in rows:
            f = r.get("forgetting")
            matched_rows.append([e(FAMILY_LABELS.get(family, family)), f"{r['level']:.0%}",
                                 e(names.get(r.get("point"), "not reached")) if r["reached"] else "not reached",
                                 "" if not r["reached"] else f"{f['estimate']:+.3f} ({f['low']:+.3f} to {f['high']:+.3f})"])
    curve_rows = tradeoff_rows(finding)
    mode_rows = retention_mode_rows(law.get("retention_modes"), names, tasks)
    run_rows = [[e(p["method"]), e(p["setting"]), str(p["checkpoint_step"]) + ("" if not p["final"] else " (final)"),
                 f"{p['new_task_success']:.0%}", *[f"{p['retention'][t]:.0%}" for t in tasks],
                 f"{p['forgetting']:+.3f}", fmt(p["forward_kl_new"])] for p in law["points"]]
    video_html = "".join(
        f"<figure><video src='{e(c['file'])}' controls muted loop preload='auto' width='{config.video_size * 2}'>"
        f"</video><figcaption><b>{e(c['policy'])}</b> on {e(c['task'])}<br>&ldquo;{e(c['instruction'])}&rdquo;, seed "
        f"{c['seed']}: {'success' if c['success'] else 'failure'} after {c['length']} steps</figcaption></figure>"
        for c in clips)
    timing_rows = [[e(t["stage"]), f"{t['seconds']:.0f}"] for t in timings]
    checks = law.get("design_checks") or {}
    pi0 = law["pi0"]
    eps = law["episodes"]
    where = setting(config)
    stand_in_html = "".join(f"<li>{e(m)}</li>" for m in where["stand_ins"])
    held = {True: "held", False: "reversed", None: "not resolved"}[finding.get("held")]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.88em}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             ".finding{border-left:5px solid #444;background:#f7f7f7;padding:0.6em 1em}figure{display:inline-block;"
             "margin:0.4em;vertical-align:top;width:330px}figcaption{font-size:0.8em}img{max-width:100%}"
             "small{color:#666}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RL's Razor on robots: {e(new)}</title>
<style>{style}</style></head><body>
<h1>RL's Razor on robots</h1>
<p>A multi-task base policy pi0 learned {", ".join(e(t) for t in tasks)} (and the other prior tasks); every method
fine-tuned it on <b>{e(new)}</b>. Forgetting is the mean drop in success on the retention tasks, episodes paired by
seed. Final policies: {eps.get('final')} episodes per task and axis; mid-training policies: {eps.get('snapshot')}
episodes per task on the in-distribution axis. Intervals are 95 % (Wilson for rates, paired bootstrap for
differences). {starts_note(results, [*tasks, new])}</p>
<p>Setting: {e(where['policy'])}, reading {e(where['observes'])}; {e(where['camera'])}; {e(where['warmup'])}.</p>
{f"<p>Scenes built with stand-ins (results are not comparable with published SimplerEnv numbers):</p><ul>{stand_in_html}</ul>" if where["stand_ins"] else ""}
<div class="finding"><b>Finding ({held}).</b> {e(finding['statement'])}</div>
{f'<p>Language-model half of the experiment: <a href="{e(llm_report)}">the LLM report</a> (vla-cl llm).</p>' if llm_report else ""}
<h2>pi0</h2>
<p>pi0: new task {pi0['new_task_success']:.0%}; retention tasks {", ".join(f"{e(t)} {v:.0%}" for t, v in pi0['retention'].items())}.
Design targets: {", ".join(f"{e(k)}: {'met' if v else 'MISSED'}" for k, v in checks.items()) or "n/a"}.</p>
<h2>Pareto frontier and the forgetting law</h2>
<img src="{ASSETS}/pareto.png" alt="Pareto frontier per method" width="620">
{budget_words(law.get("budgeted", []))}
<img src="{ASSETS}/forgetting_vs_kl.png" alt="forgetting against the forward KL on the new task" width="620">
<img src="{ASSETS}/r2.png" alt="R squared per predictor" width="620">
<h3>R<sup>2</sup> of each predictor (2nd-degree fit of forgetting)</h3>
{r2_rows(law, "final policies")}
{ordered_note(law)}
{prediction_rows(law)}
<p>ParityMNIST mechanism check in this run: R<sup>2</sup>(forward KL on the new task) = {fmt(parity_r2)}.</p>
<h3>SFT against RL along the trade-off curves</h3>
<p>Each family's forgetting interpolated linearly from pi0 through its final policies by new-task success (no
policy is selected, so no winner's curse); intervals resample episodes{" and training seeds" if config.seeds > 1 else ""}.</p>
{table(["new-task success", "RL forgetting (95 % CI)", "SFT forgetting (95 % CI)", "SFT minus RL (95 % CI)",
        "draws reaching it"], curve_rows)}
<p>"Draws reaching it": the share of bootstrap draws in which both curves reach the level; below 100 % the interval
is over those draws only, so it is optimistic at the top of the range.</p>
<h3>Forgetting at matched new-task success (final policies)</h3>
<p>Descriptive: the least-forgetting final policy of each family reaching a level, chosen and measured on the same
episodes, so a family with more policies looks better; the finding above chooses and measures on separate halves.</p>
{table(["method", "new-task success at least", "least-forgetting policy", "forgetting vs pi0 (95 % CI)"], matched_rows)}
<h3>Retention acting greedily and sampling</h3>
{"<p>Greedy retention was not evaluated in this run (greedy_retention=false).</p>" if not mode_rows else
 "<p>Forgetting per retention task and its mean (pi0's success minus the policy's, paired episodes, 95 % CI), with "
 "sampled actions (the suite's evaluation) and argmax actions. Sampling rewards a policy that merely sharpens; "
 "argmax does not.</p>" + table(["policy", "actions", *[e(t) for t in tasks], "mean"], mode_rows)}
<h2>Success per task (in-distribution)</h2>
{table(["policy", *[e(t) for t in tasks], e(new) + " (new)"], success_rows)}
<h2>Generalisation axes</h2>
{table(["policy", *[f"new: {a}" for a in AXES], *[f"retention mean: {a}" for a in AXES]], axis_rows)}
<h2>Rollouts</h2>
{video_html}
<h2>Every run</h2>
{table(["method", "setting", "iteration", "new task", *[e(t) for t in tasks], "forgetting", "forward KL (new)"], run_rows)}
<h2>Stage timings</h2>
{table(["stage", "seconds"], timing_rows)}
</body></html>
"""


def _ci(d: dict | None) -> str:
    return "" if d is None else f"{d['estimate']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"


def tradeoff_rows(finding: dict) -> list[list[str]]:
    reach = lambda r: "" if r["sft_minus_rl"] is None else f"{r['sft_minus_rl']['defined_in']:.0%}"
    return [[f"{r['level']:.0%}", _ci(r["rl"]) or "not reached", _ci(r["sft"]) or "not reached",
             _ci(r["sft_minus_rl"]), reach(r)] for r in finding.get("tradeoff", {}).get("levels", [])]


def retention_mode_rows(modes: dict | None, names: dict[str, str], tasks: list[str]) -> list[list[str]]:
    if not modes:
        return []
    rows = [["pi0 (success)", mode, *[f"{modes['pi0'][mode][t]:.0%}" for t in tasks], ""] for mode in ("sampled", "greedy")]
    for key, both in modes["policies"].items():
        for mode in ("sampled", "greedy"):
            r = both[mode]
            rows.append([html.escape(names.get(key, key)), mode, *[_ci(r["forgetting"][t]) for t in tasks],
                         _ci(r["mean_forgetting"])])
    return rows


def write(config: Any, pi0: str, trials: list[dict], law: dict, run_dir: Any, folder: Path) -> dict:
    """Plots, videos, summary.json and report.html (see the module docstring)."""
    assets = run_dir.path / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    plot_pareto(law, assets / "pareto.png", FAMILY_LABELS)
    plot_forgetting_vs_kl(law, assets / "forgetting_vs_kl.png", FAMILY_LABELS)
    plot_r2(law, assets / "r2.png")
    clips = videos(config, pi0, law, trials, assets) if config.videos else []
    evaluations = run_dir.path / "evaluation"
    results = {key: {(c["task"], c["axis"]): c for c in json.loads((evaluations / key / "result.json").read_text())["cells"]}
               for key in ["pi0", *[p["key"] for p in law["points"] if p["final"]]]}
    pi0_stage = run_dir.path / "pi0_eval" / "stage.json"
    law = {**law, "design_checks": json.loads(pi0_stage.read_text())["result"]["design_checks"]
           if pi0_stage.exists() else {}}
    timings = [{"stage": p.parent.name, "seconds": json.loads(p.read_text())["seconds"]}
               for p in sorted(run_dir.path.glob(f"*/{'stage.json'}"), key=lambda p: p.stat().st_mtime)]
    parity = run_dir.path / "mechanism" / "stage.json"
    parity_r2 = json.loads(parity.read_text())["result"].get("r2_forward_kl_new") if parity.exists() else None
    summary = {"new_task": config.new_task, "retention_tasks": law["retention_tasks"], "pi0": law["pi0"],
               "runs": law["points"], "r2": law["r2"], "r2_final_only": law["r2_final"],
               "r2_trust": law.get("r2_trust"), **{key: law.get(key) for key in CEILING_KEYS},
               "retention_modes": law.get("retention_modes"),
               "pareto": law["pareto"], "matched": law["matched"], "finding": law["finding"],
               "budgeted": law.get("budgeted", []), "prediction": law.get("prediction"),
               "probe": {"task": config.new_task, "episodes": config.probe_episodes, "seed": config.seed,
                         "options": config.rollout_options()},
               "episodes": law["episodes"], "design_checks": law["design_checks"], "videos": clips,
               "parity_r2_forward_kl_new": parity_r2, "setting": setting(config),
               "config": json.loads(json.dumps(config.__dict__, default=str))}
    llm = latest_report("llm", run_dir.path)
    llm_link = os.path.relpath(llm, run_dir.path) if llm else None
    summary["llm_report"] = llm_link
    write_json_atomic(run_dir.path / "summary.json", summary)
    write_text_atomic(run_dir.path / "report.html", page(config, law, results, clips, timings, parity_r2, llm_link))
    return {"report": str(run_dir.path / "report.html"), "videos": len(clips)}
