"""``vla-cl razor``: RL's Razor on robots, end to end, one resumable stage after another.

Stages, each in its own sub-folder of the run directory, each skipped when its ``stage.json`` says it
finished (and resumed where it stopped otherwise):

    info        machine and package report
    mechanism   the ParityMNIST check (``vla-cl parity preset=quick``)
    demos       scripted-expert demonstrations of the prior tasks and of the new task
    pi0         the multi-task base policy by behaviour cloning, then the new task's words added
    pi0_eval    pi0 on the experiment suite (retention tasks + new task, every axis)
    sweep       PPO / SFT / hybrids (and REINFORCE in preset=paper) on the new task
    evaluation  every final policy (every axis) and mid-training snapshot (in-distribution) on the suite,
                and every forgetting predictor
    greedy      pi0 and every final policy on the retention tasks with argmax actions (``greedy_retention``)
    law         the fits, Pareto frontiers, matched-success comparisons and the finding
    report      summary.json, report.html with plots and videos

Before the first stage the plan of the run is printed (and kept in ``plan.json``): each stage's work and an
estimate of its hours (``vla_cl.razor.budget``). A table of stage timings is printed at the end (and kept in
``timings.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from vla_cl.files import write_json_atomic
from vla_cl.razor.config import WORD_POLICIES, RazorConfig
from vla_cl.runs import RunDir
from vla_cl.stages import Stages, log, resolve_workers

# ------------------------------------------------------------------------------------------ the stages


def stage_info(folder: Path) -> dict:
    from vla_cl.envs.check import machine_report

    report = machine_report()
    write_json_atomic(folder / "info.json", report)
    log(f"[razor]   torch {report['versions']['torch']}, cuda={report['cuda']}, Vulkan: {report['vulkan']}")
    return {"torch": report["versions"]["torch"], "cuda": report["cuda"]}


def stage_mechanism(config: RazorConfig, folder: Path) -> dict:
    from vla_cl.config import build_config, config_layers
    from vla_cl.parity.command import ParityConfig
    from vla_cl.parity.command import run as run_parity

    cfg = build_config(ParityConfig, *config_layers("parity", {"preset": config.parity_preset}),
                       {"seed": config.seed, "sweep": {"workers": config.parity_workers, "progress": config.progress},
                        "out_dir": str(folder)})
    with RunDir.open(cfg.out_dir, "parity", cfg) as run_dir:
        status = run_parity(cfg, run_dir)
    summary = json.loads((folder / "summary.json").read_text())
    r2 = summary.get("r2", {}).get("forward_kl_new")
    log(f"[razor]   ParityMNIST R^2 of the forward KL on the new task: {'n/a' if r2 is None else f'{r2:.3f}'}")
    return {"status": int(status or 0), "r2_forward_kl_new": r2}


def stage_demos(config: RazorConfig, folder: Path, pi0_folder: Path, workers: int) -> dict:
    """The experts' demonstrations: of the prior tasks (and the new task's warm-up ones) where pi0's warm-up
    reads them, and of the new task for the SFT arms; recorded as the policy observes (images at its input
    size, the experiment's camera)."""
    from vla_cl.envs.expert_demos import expert_demos

    recorded = config.pretrain_config(None).recording()
    prior = expert_demos(config.prior_tasks, config.demos, config.seed, pi0_folder / "artifacts" / "demos",
                         workers=workers, **recorded)
    if config.new_task_warmup:
        prior += expert_demos([config.new_task], config.new_task_warmup, config.seed,
                              pi0_folder / "artifacts" / "demos", **recorded)
    (new,) = expert_demos([config.new_task], config.new_task_demos, config.seed, folder, **recorded)
    sets = {f"{d.meta['task_id']} ({d.meta['counts']['episodes']})": d.meta for d in [*prior, new]}
    for meta in sets.values():
        c = meta["counts"]
        log(f"[razor]   {meta['task_id']}: {c['episodes']} demonstrations ({c['steps']} steps, {c['attempts']} "
            f"attempts, expert success {meta['success_rate']:.0%})")
    return {"counts": {name: meta["counts"] for name, meta in sets.items()},
            "expert_success": {name: meta["success_rate"] for name, meta in sets.items()}}


def stage_pi0(config: RazorConfig, folder: Path, workers: int) -> dict:
    from vla_cl.envs import get_spec
    from vla_cl.razor.pretrain import pretrain

    pre = config.pretrain_config(str(folder), workers)
    with RunDir.open(folder, "pretrain", pre) as sub:
        policy_folder = pretrain(pre, sub)
    new = get_spec(config.new_task).instruction
    if config.policy not in WORD_POLICIES:  # reads any text through its tokenizer: pi0 is the warm-up's policy
        log(f"[razor]   pi0: {config.policy} warmed up on {len(pre.tasks)} tasks"
            + (f" ({config.new_task_warmup} demonstrations of the new task)" if config.new_task_warmup else ""))
        return {"policy": str(policy_folder), "added_words": []}
    from vla_cl.policies import load_policy

    pi0 = load_policy(policy_folder)
    source = get_spec(config.init_from).instruction if config.init_from else None
    words = pi0.add_instruction(new, init_from=source)
    pi0.save_pretrained(folder / "pi0_for_new_task", metadata={"new_task": config.new_task, "init_from": source,
                                                               "added_words": words})
    start = f"start as in {source!r}" if source else "start at random"
    log(f"[razor]   pi0: {sum(p.numel() for p in pi0.parameters()):,} parameters; "
        + (f"the new task's words {words} {start}" if words else "it knows every word of the new task's instruction"))
    return {"policy": str(folder / "pi0_for_new_task"), "added_words": words}


# ------------------------------------------------------------------------------------------ the command


def run(config: RazorConfig, run_dir: RunDir) -> int:
    from vla_cl.razor import measure as measure_stage
    from vla_cl.razor import report as report_stage
    from vla_cl.razor.sweep import run_sweep

    check_device_for(config)
    workers = resolve_workers(config.workers)
    announce_plan(config, run_dir)
    stages = Stages(run_dir)
    stages("info", "machine and package report", stage_info)
    if config.parity_preset != "none":
        stages("mechanism", f"mechanism check on ParityMNIST (preset={config.parity_preset})",
               lambda f: stage_mechanism(config, f))
    pi0_dir = run_dir.path / "pi0"
    stages("demos", "scripted-expert demonstrations of the prior tasks and the new task",
           lambda f: stage_demos(config, f, pi0_dir, workers))
    pi0 = stages("pi0", f"multi-task pi0 by behaviour cloning on {len(config.prior_tasks)} tasks",
                 lambda f: stage_pi0(config, f, workers))["policy"]
    evaluations = run_dir.path / "evaluation"
    stages("pi0_eval", "pi0 on the retention suite and the new task, every axis",
           lambda f: measure_stage.evaluate_pi0(config, pi0, evaluations, workers))
    trials = stages("sweep", f"fine-tuning sweep on {config.new_task}", lambda f: [
        {"trial": t.__dict__, "folder": str(p)} for t, p in run_sweep(config, f, Path(pi0),
                                                                   run_dir.path / "demos" / _slug(config.new_task),
                                                                   workers if config.device == "cpu" else 1, log)])
    stages("evaluation", "every fine-tuned policy on the suite, and every forgetting predictor",
           lambda f: measure_stage.evaluate_all(config, pi0, trials, evaluations, f, workers))
    if config.greedy_retention:
        stages("greedy", "pi0 and every final policy on the retention tasks, greedy actions",
               lambda f: measure_stage.evaluate_greedy(config, pi0, trials, run_dir.path / "evaluation_greedy",
                                                       workers))
    law = stages("law", "forgetting law: fits, Pareto frontiers, matched-success comparison",
                 lambda f: report_stage.analyse(config, pi0, trials, evaluations, run_dir.path / "evaluation", f))
    stages("report", "summary.json, report.html, videos",
           lambda f: report_stage.write(config, pi0, trials, law, run_dir, f))
    stages.finish(law["finding"]["statement"], run_dir.path / "report.html")
    return 0


def announce_plan(config: RazorConfig, run_dir: RunDir) -> None:
    """The run's work per stage and its estimated hours (``vla_cl.razor.budget``), in the log and ``plan.json``."""
    from vla_cl.razor import budget

    plan = budget.summary(config)
    write_json_atomic(run_dir.path / "plan.json", plan)
    log("[razor] plan (work per stage, upper bounds; hours from per-unit costs, see vla_cl.razor.budget):")
    log(budget.table(plan))


def check_device_for(config: RazorConfig) -> None:
    """Refuse, before any stage, a device this machine lacks, naming the CPU presets."""
    from vla_cl.updaters.loop import check_device

    try:
        check_device(config.device)
    except ValueError as error:
        raise ValueError(f"invalid value for {error}. On a CPU, run the same stages with preset=openvla_tiny (a "
                         "toy OpenVLA) or preset=vision (small_vlm on the Bridge images)") from None


def _slug(task: str) -> str:
    from vla_cl.envs.expert_demos import task_slug

    return task_slug(task)
