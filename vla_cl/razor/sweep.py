"""The razor sweep: every fine-tuning run of the new task, in parallel (``vla_cl.workers``: processes or Ray
tasks), resumable.

Each trial is a ``vla-cl train`` run in ``sweep/<trial id>/`` (its config built from typed layers and
validated like the command line's, ``build_train_config``), from the same pi0 and with the experiment's common settings; its mid-training snapshots
land in ``artifacts/snapshots``. A trial whose ``summary.json`` exists is finished and never redone; an
interrupted one resumes from its last checkpoint (the training loop's exact resume), so a sweep started
again loses no finished trial and repeats no finished iteration.

``distill`` learns from the best RL run's rollouts, so it starts once every RL run has finished: the best is
the one with the highest final in-loop success on the new task (ties: the lower forward KL).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from vla_cl.razor.config import DEMO_METHODS, RL_METHODS, RazorConfig, Trial
from vla_cl.workers import pool as worker_pool

SUMMARY = "summary.json"


def finished(folder: Path) -> bool:
    return (folder / SUMMARY).exists() and (folder / "artifacts" / "policy").is_dir()


def train_trial(layers: list[dict[str, Any]], out_dir: str) -> dict[str, Any]:
    """Run (or resume) one trial in this process; returns its summary. Runs in a worker process."""
    import torch

    from vla_cl.runs import RunDir
    from vla_cl.updaters.command import build_train_config
    from vla_cl.updaters.command import run as run_train

    torch.set_num_threads(1)
    config = build_train_config(*layers, {"out_dir": out_dir})
    start = time.perf_counter()
    with RunDir.open(config.out_dir, "train", config) as run_dir:
        run_train(config, run_dir)
    summary = json.loads((Path(out_dir) / SUMMARY).read_text())
    return {"seconds": time.perf_counter() - start, **summary}


def common_fields(config: RazorConfig, pi0: Path) -> dict[str, Any]:
    """What every trial shares: the new task, pi0, the envs and the in-loop measurements."""
    from vla_cl.envs import get_spec

    return {"task": config.new_task, "init": str(pi0), "num_envs": config.num_envs, "eval_every": 0,
            "eval_episodes": 16, "probe_episodes": 4, "progress": False, "tensorboard": False,
            "device": config.device, "lora_rank": config.lora_rank, "processes": config.processes,
            "max_episode_steps": get_spec(config.new_task).max_episode_steps, **config.rollout_options()}


def trial_layers(trial: Trial, common: dict[str, Any], demos: Path) -> list[dict[str, Any]]:
    """The layers of one trial's ``vla-cl train`` config: the common fields, the new task's demonstrations
    for the methods that learn from them, the trial's own fields and the run's refresh/checkpoint schedule
    (the scenes are rebuilt, and a resume can start, every third of a run)."""
    every = max(1, trial.iterations // 3)
    data = {"demos": str(demos)} if trial.method in DEMO_METHODS else {}
    return [common, data, trial.train, {"refresh_every": every, "checkpoint_every": every}]


def best_rl(results: dict[str, dict], trials: list[Trial]) -> Trial:
    """The RL trial with the highest final in-loop new-task success (ties: lower forward KL)."""
    rl = [t for t in trials if t.method in RL_METHODS and t.id in results]
    if not rl:
        raise ValueError("no RL run finished: distill has no teacher")

    def score(trial: Trial) -> tuple[float, float]:
        final = results[trial.id]["final"]
        return final.get("eval/success_rate", 0.0), -final.get("kl/mean", 0.0)

    return max(rl, key=score)


def run_sweep(config: RazorConfig, folder: Path, pi0: Path, demos: Path, workers: int,
              log: Any = print) -> list[tuple[Trial, Path]]:
    """Every trial (see the module docstring); returns (trial, run folder) in plan order."""
    trials = config.trials()
    common = common_fields(config, pi0)
    results: dict[str, dict] = {}
    for trial in trials:
        out = folder / trial.id
        if finished(out):
            results[trial.id] = json.loads((out / SUMMARY).read_text())
    todo = [t for t in trials if t.id not in results]
    # the longest first (RL runs collect episodes; SFT runs are seconds), so the pool drains evenly
    todo.sort(key=lambda t: (t.method not in RL_METHODS, trials.index(t)))
    distill: list[Trial] = []
    pending: dict[Any, Trial] = {}
    with worker_pool(max(1, workers)) as pool:
        def submit(trial: Trial) -> None:
            log(f"[razor]   trial {trial.id}: started")
            pending[pool.submit(train_trial, trial_layers(trial, common, demos), str(folder / trial.id))] = trial

        def plan_distill() -> None:
            if distill or any(t.method in RL_METHODS and t.id not in results for t in trials):
                return
            for seed in range(config.seeds):
                teacher = best_rl(results, [t for t in trials if t.setting.endswith(f"_s{seed}")
                                            or config.seeds == 1])
                trial = config.distill_trial(str(folder / teacher.id / "artifacts" / "policy"), teacher.id, seed)
                distill.append(trial)
                if finished(folder / trial.id):
                    results[trial.id] = json.loads((folder / trial.id / SUMMARY).read_text())
                else:
                    submit(trial)

        for trial in todo[: max(1, workers)]:
            submit(trial)
        queue = todo[max(1, workers):]
        plan_distill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                trial = pending.pop(future)
                results[trial.id] = future.result()
                final = results[trial.id]["final"]
                log(f"[razor]   trial {trial.id}: new-task success {final.get('eval/success_rate', float('nan')):.2f} "
                    f"(in-loop, 16 episodes), KL {final.get('kl/mean', float('nan')):.2f}, "
                    f"{results[trial.id].get('seconds', 0):.0f} s")
                if queue:
                    submit(queue.pop(0))
            plan_distill()
    return [(t, folder / t.id) for t in [*trials, *distill]]
