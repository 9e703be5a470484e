"""``vla-cl pretrain``: a multi-task pi0 by behaviour cloning on scripted-expert demonstrations.

    vla-cl pretrain tasks=[maniskill/PickCube-v1,maniskill/PushCube-v1] demos=150 out_dir=runs/pi0

One instruction-conditioned policy learns several tasks at once: each task's expert is recorded on the
training grid (``vla-cl demos``' collector; ``artifacts/demos/<task>/``, reused when the run is started
again), the sets are merged with each episode keeping its task's instruction, and the one training loop
runs ``sft`` on them with no env (there is no single task to evaluate during training). The policy lands
in ``artifacts/policy`` (reload it with ``vla_cl.policies.load_policy``), and its success per task is then
measured through a suite (``suite=NAME``, or by default the pretraining tasks on the in-distribution axis)
into ``eval/``.

Why Gaussian soft labels by default (``label_sigma=2`` bins): the experts' actions vary smoothly with the
state, and a 256-way head trained on hard labels fits that ordering slowly. Measured on this machine
(Pick/Push/Pull/Stack, 200 demos each, 60 epochs, state_token): hard labels at lr 1e-3 gave 13-30 %
sampled PickCube success; soft labels with lr 1e-2 gave 87 %.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.runs import RunDir
from vla_cl.stages import resolve_workers

POLICIES = ("state_token", "small_vlm")
DEFAULT_TASKS = ["maniskill/PickCube-v1", "maniskill/PushCube-v1", "maniskill/PullCube-v1", "maniskill/StackCube-v1"]


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    tasks: list = option(list(DEFAULT_TASKS), "tasks to learn (each needs a scripted expert)")  # noqa: RUF009
    demos: int = option(150, "expert episodes kept per task (successful ones)")
    policy: str = option("state_token", f"the policy to train: {', '.join(POLICIES)}")
    obs_mode: str = option("state", "observations recorded and read: state, rgb or both (small_vlm reads images)")
    image_size: int = option(64, "image side for rgb/both")
    epochs: float = option(60.0, "passes over the merged demonstrations")
    batch_size: int = option(256, "demonstration samples per optimiser step")
    lr: float = option(1e-2, "AdamW peak learning rate (cosine decay to 0)")
    label_sigma: float = option(2.0, "Gaussian soft labels, sigma in bins (0 = hard labels); see the module docstring")
    hidden: list = option([256, 256], "state_token: hidden layer widths")  # noqa: RUF009
    suite: str | None = option(None, "suite to measure pi0 on (None: the pretraining tasks, in_distribution)")
    eval_episodes: int = option(50, "episodes per task when suite is None")
    workers: int = option(0, "worker processes for demonstrations and evaluation (0: one per core)",
                          affects_results=False)
    progress: bool = option(True, "show progress bars", affects_results=False)

    def __post_init__(self) -> None:
        from vla_cl.envs import get_spec
        from vla_cl.envs.experts import has_expert

        self.tasks = list(self.tasks)
        require(bool(self.tasks) and len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks,
                "a non-empty list of distinct task ids")
        for task in self.tasks:
            try:
                get_spec(task)
            except ValueError as error:
                raise ValueError(f"invalid value for tasks: {error}") from None
            require(has_expert(task), "tasks", task, "tasks with a scripted expert (vla_cl.envs.experts)")
        require(self.demos >= 1, "demos", self.demos, "an integer >= 1")
        require_choice("policy", self.policy, POLICIES)
        require_choice("obs_mode", self.obs_mode, ("state", "rgb", "both"))
        require(self.policy != "small_vlm" or self.obs_mode != "state", "obs_mode", self.obs_mode,
                "rgb or both: small_vlm reads images")
        require(16 <= self.image_size <= 512 and self.image_size % 16 == 0, "image_size", self.image_size,
                "a multiple of 16 in 16..512")
        require(self.epochs > 0, "epochs", self.epochs, "> 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins")
        require(bool(self.hidden) and all(int(h) >= 1 for h in self.hidden), "hidden", self.hidden,
                "a non-empty list of positive widths")
        require(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        require(self.workers >= 0, "workers", self.workers, "an integer >= 0 (0: one per core)")
        if self.suite is not None:
            from vla_cl.evaluation.suite import load_suite

            load_suite(self.suite)


# ------------------------------------------------------------------------------------------ demonstrations


def task_slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def _collect_one(task: str, n: int, seed: int, obs_mode: str, image_size: int, folder: str) -> str:
    import torch

    from vla_cl.envs.demos import collect_demos, save_demos

    torch.set_num_threads(1)
    save_demos(collect_demos(task, n, seed=seed, obs_mode=obs_mode, image_size=image_size), folder)
    return folder


def _cached(folder: Path, task: str, n: int, seed: int, obs_mode: str):
    from vla_cl.envs.demos import load_demos

    if not folder.exists():
        return None
    try:
        demos = load_demos(folder)
    except (ValueError, OSError):
        return None
    meta = demos.meta
    same = (meta.get("task_id") == task and meta["counts"]["episodes"] == n and meta.get("obs_mode") == obs_mode
            and meta.get("episode_seeds", [None])[0] is not None and min(meta["episode_seeds"]) >= seed)
    return demos if same else None


def expert_demos(tasks: list[str], n: int, seed: int, root: Path, *, obs_mode: str = "state", image_size: int = 64,
                 workers: int = 1, log: Any = None) -> list:
    """Each task's expert demonstrations in ``root/<task>/``: read when already there, else recorded (tasks in
    parallel processes). Episode k of every task is attempted from seed ``seed + k``."""
    import multiprocessing

    from vla_cl.envs.demos import load_demos

    todo = [t for t in tasks if _cached(root / task_slug(t), t, n, seed, obs_mode) is None]
    if todo:
        start = time.perf_counter()
        args = [(t, n, seed, obs_mode, image_size, str(root / task_slug(t))) for t in todo]
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_collect_one, *zip(*args)))
        else:
            for a in args:
                _collect_one(*a)
        if log is not None:
            log(event="demos", tasks=todo, seconds=round(time.perf_counter() - start, 2))
    return [load_demos(root / task_slug(t)) for t in tasks]


# ------------------------------------------------------------------------------------------ pi0


def build_policy(config: PretrainConfig, demos, instructions: list[str]):
    """A fresh policy for the merged demonstrations: their state size and action statistics, the tasks'
    instructions as its vocabulary."""
    import torch

    from vla_cl.policies import make_policy
    from vla_cl.tokenizer import ActionTokenizer, NormStats
    from vla_cl.updaters.loop import derived_seed

    stats = demos.meta["action_stats"]
    tokenizer = ActionTokenizer(256, 256, NormStats(stats["q01"], stats["q99"], stats["mask"]))
    torch.manual_seed(derived_seed(config.seed, 100))
    if config.policy == "state_token":
        return make_policy("state_token", tokenizer=tokenizer, state_dim=demos.meta["state_dim"],
                           instructions=instructions, hidden=[int(h) for h in config.hidden])
    state_dim = demos.meta["state_dim"] if config.obs_mode == "both" else 0
    return make_policy("small_vlm", tokenizer=tokenizer, instructions=instructions, image_size=config.image_size,
                       state_dim=state_dim)


def pretrain(config: PretrainConfig, run_dir: RunDir) -> Path:
    """Demonstrations -> merged -> behaviour cloning; returns the policy's folder (see the module docstring)."""
    from vla_cl.envs import get_spec
    from vla_cl.envs.demos import merge_demos
    from vla_cl.updaters.loop import LoopConfig, train
    from vla_cl.updaters.supervised import SFT, SFTConfig

    workers = resolve_workers(config.workers)
    sets = expert_demos(config.tasks, config.demos, config.seed, run_dir.artifacts / "demos", obs_mode=config.obs_mode,
                        image_size=config.image_size, workers=workers, log=run_dir.log)
    merged = merge_demos(sets)
    policy = build_policy(config, merged, [get_spec(t).instruction for t in config.tasks])
    iterations = max(1, math.ceil(config.epochs * len(merged) / config.batch_size))
    updater = SFT(SFTConfig(lr=config.lr, schedule="cosine", batch_size=config.batch_size, minibatches=1,
                            label_sigma=config.label_sigma))
    loop = LoopConfig(iterations=iterations, checkpoint_every=max(1, iterations // 4), progress=config.progress,
                      tensorboard=False)
    print(f"[pretrain] {policy.name} ({sum(p.numel() for p in policy.parameters()):,} parameters) on "
          f"{len(merged)} steps of {merged.num_episodes} demonstrations of {len(config.tasks)} tasks: "
          f"{iterations} iterations of {config.batch_size}", flush=True)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(workers)  # nothing else runs meanwhile: let the matrix products use every core
    try:
        train(policy, updater, None, loop, run_dir, seed=config.seed, demos=merged)
    finally:
        torch.set_num_threads(threads)
    return run_dir.artifacts / "policy"


def pretrain_suite(config: PretrainConfig):
    from vla_cl.evaluation.suite import SuiteConfig, load_suite

    if config.suite is not None:
        return load_suite(config.suite)
    return SuiteConfig(name="pretraining tasks", tasks=list(config.tasks), episodes=config.eval_episodes)


def run(config: PretrainConfig, run_dir: RunDir) -> int:
    from vla_cl.evaluation.runner import evaluate

    start = time.perf_counter()
    folder = pretrain(config, run_dir)
    trained = time.perf_counter() - start
    suite = pretrain_suite(config)
    result = evaluate(folder, suite, out_dir=run_dir.path / "eval", workers=resolve_workers(config.workers),
                      progress=config.progress, label="pi0")
    for cell in result.cells.values():
        run_dir.log(event="eval", **cell.summary())
    run_dir.write_json("summary.json", {"policy": str(folder), "train_seconds": round(trained, 1),
                                        "eval_seconds": round(result.seconds, 1),
                                        "success": {f"{t}/{a}": c.summary() for (t, a), c in result.cells.items()}})
    print(result.markdown())
    print(f"[pretrain] pi0 in {folder}; evaluation in {run_dir.path / 'eval'}")
    return 0
