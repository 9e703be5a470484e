"""The razor sweep: every fine-tuning run of the new task, in parallel worker processes, resumable.

Each trial is a ``vla-cl train`` run in ``sweep/<trial id>/`` (its config composed and validated like the
command line's), from the same pi0 and with the experiment's common settings; its mid-training snapshots
land in ``artifacts/snapshots``. A trial whose ``summary.json`` exists is finished and never redone; an
interrupted one resumes from its last checkpoint (the training loop's exact resume), so a sweep started
again loses no finished trial and repeats no finished iteration.

``distill`` learns from the best RL run's rollouts, so it starts once every RL run has finished: the best is
the one with the highest final in-loop success on the new task (ties: the lower forward KL).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from vla_cl.razor.config import RL_METHODS, RazorConfig, Trial

SUMMARY = "summary.json"


def finished(folder: Path) -> bool:
    return (folder / SUMMARY).exists() and (folder / "artifacts" / "policy").is_dir()


def train_trial(overrides: list[str], out_dir: str) -> dict[str, Any]:
    """Run (or resume) one trial in this process; returns its summary. Runs in a worker process."""
    import torch

    from vla_cl.cli.compose import compose
    from vla_cl.cli.registry import COMMANDS
    from vla_cl.runs import RunDir

    torch.set_num_threads(1)
    spec = COMMANDS["train"]
    config = compose("train", spec.load_config_class(), [*overrides, f"out_dir={out_dir}"])
    start = time.perf_counter()
    with RunDir.open(config.out_dir, "train", config) as run_dir:
        spec.load_run()(config, run_dir)
    summary = json.loads((Path(out_dir) / SUMMARY).read_text())
    return {"seconds": time.perf_counter() - start, **summary}


def common_overrides(config: RazorConfig, pi0: Path, demos: Path) -> dict[str, list[str]]:
    """What every trial shares, by data source: RL and distill trials collect episodes of the new task from
    pi0; SFT trials also read the new task's demonstrations."""
    from vla_cl.envs import get_spec

    base = [f"task={config.new_task}", f"init={pi0}", f"num_envs={config.num_envs}", "eval_every=0",
            "eval_episodes=16", "probe_episodes=4", "progress=false", "tensorboard=false",
            f"device={config.device}", f"lora_rank={config.lora_rank}", f"processes={str(config.processes).lower()}",
            *[f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in
              {"max_episode_steps": get_spec(config.new_task).max_episode_steps, **config.rollout_options()}.items()]]
    return {"rollouts": base, "demos": [*base, f"demos={demos}"]}


def _overrides(trial: Trial, common: dict[str, list[str]]) -> list[str]:
    source = "demos" if trial.method in ("sft", "sft_kl") else "rollouts"
    return [*common[source], *trial.overrides, f"checkpoint_every={max(1, trial.iterations // 3)}"]


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
    common = common_overrides(config, pi0, demos)
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
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        def submit(trial: Trial) -> None:
            log(f"[razor]   trial {trial.id}: started")
            pending[pool.submit(train_trial, _overrides(trial, common), str(folder / trial.id))] = trial

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
