"""``vla-cl continual``: fine-tune on tasks one after another and measure what each stage kept.

    vla-cl continual init=runs/pi0/artifacts/policy tasks=[maniskill/PushCube-v1,maniskill/PullCube-v1] \
        updater=ppo iterations=20 'train={updater: {optim: {lr: 3e-4}}}'

Stage i fine-tunes the policy chosen from stage i-1 (stage 0: ``init``) on ``tasks[i]`` with ``vla-cl train``
(any updater; ``train`` sets further ``vla-cl train`` fields, a mapping nested like its config; updaters
that learn from demonstrations get the task's expert demonstrations, recorded once into ``artifacts/demos``),
in ``stage_<i>/``. The loop's own
evaluations of the stage's task during its training (at iteration 0, every ``eval_every`` iterations and at
the last) form the during-training curve. ``checkpoint=best`` (LIBERO's choice, the default) keeps the
policy at each of them (``snapshot_every = eval_every``) and chooses the one with the highest success, the
earliest on ties (iteration 0: the stage's init; the last: ``artifacts/policy``; the others:
``artifacts/snapshots/iter-NNNNNN``); ``checkpoint=final`` chooses the last. The chosen policy is what the
suite evaluates after the stage (``stage_<i>/eval``; by default the sequence's tasks on the
in-distribution axis) and what stage i+1 starts from. With ``reference=true`` each task is also trained alone,
from a policy freshly built (from scratch) with the same updater and budget, in ``reference_<i>/``: Continual
World's single-task reference for forward transfer.

Outputs: ``summary.json`` with the task x stage success matrix, the during-training curves, the checkpoint
chosen from each stage (``chosen``: its iteration, folder and in-loop success; also in the run's log) and
every metric of :func:`vla_cl.evaluation.continual.continual_metrics` (LIBERO FWT, NBT, AUC; Continual World
average performance, forgetting, forward transfer), ``matrix.md`` and the heat map ``artifacts/matrix.png``.
Every stage resumes where it stopped when the command is started again with the same out_dir (the choice is
a pure function of the finished stage's metrics, so it is made again the same).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require
from vla_cl.runs import RunDir

CHECKPOINTS = ("best", "final")


@dataclasses.dataclass
class ContinualConfig(RunConfig):
    init: str | None = option(None, "pi0: the policy checkpoint folder the first stage starts from (required)")
    tasks: list = option([], "the tasks to learn, in order (at least 2)")
    updater: str = option("ppo", "the updater of every stage (vla-cl train updater=...)")
    iterations: int = option(10, "training iterations per stage")
    train: dict = option({}, "further `vla-cl train` fields for every stage, e.g. {updater: {optim: {lr: 3e-4}}}")
    demos: int = option(50, "expert demonstrations per task, for updaters that learn from demonstrations")
    suite: str | None = option(None, "suite evaluated after each stage (None: the tasks, in_distribution)")
    eval_episodes: int = option(20, "episodes per task when suite is None")
    reference: bool = option(False, "also train each task alone from scratch (Continual World's forward transfer)")
    checkpoint: str = option("best", "which policy of a stage continues and is evaluated: best (LIBERO: the in-loop "
                             "evaluation with the highest success on the stage's task, the earliest on ties) or "
                             "final")
    workers: int = option(1, "worker processes for evaluations and demonstrations", affects_results=False)
    progress: bool = option(True, "show progress bars", affects_results=False)

    def __post_init__(self) -> None:
        from vla_cl.envs import get_spec
        from vla_cl.updaters.registry import get_updater_class

        require(self.init is not None, "init", self.init, "a policy checkpoint folder (e.g. `vla-cl pretrain`'s)")
        from vla_cl.updaters.command import _checkpoint_config

        _checkpoint_config("init", self.init)
        self.tasks = list(self.tasks)
        require(len(self.tasks) >= 2 and len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks,
                "at least 2 distinct task ids, in training order")
        for task in self.tasks:
            try:
                get_spec(task)
            except ValueError as error:
                raise ValueError(f"invalid value for tasks: {error}") from None
        try:
            source = get_updater_class(self.updater).source
        except ValueError as error:
            raise ValueError(f"invalid value for updater: {error}") from None
        require(not source.needs_teacher, "updater", self.updater, "an updater that needs no teacher policy")
        if source.needs_demos:
            from vla_cl.envs.experts import has_expert

            lacking = [t for t in self.tasks if not has_expert(t)]
            require(not lacking, "tasks", lacking, f"tasks with scripted experts (updater {self.updater} learns "
                    "from demonstrations)")
        require(self.iterations >= 1, "iterations", self.iterations, "an integer >= 1")
        require(self.demos >= 1, "demos", self.demos, "an integer >= 1")
        require(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        require(self.workers >= 1, "workers", self.workers, "an integer >= 1")
        require(self.checkpoint in CHECKPOINTS, "checkpoint", self.checkpoint, " or ".join(CHECKPOINTS))
        suite = self.suite_config()
        missing = [t for t in self.tasks if t not in suite.task_ids]
        require(not missing, "suite", self.suite, f"a suite holding every task of the sequence (lacks {missing})")
        self.train = dict(self.train)
        if source.needs_demos:  # the demonstrations are recorded by the run: check the keys only
            from vla_cl.updaters.command import check_train_mapping

            check_train_mapping("train", self.train, free=True)
        else:  # the train command validates every stage's config now, before any work
            for i, task in enumerate(self.tasks):
                self._stage_config(i, task, self.init, None, Path("/nonexistent"))

    def suite_config(self):
        from vla_cl.evaluation.suite import SuiteConfig, load_suite

        if self.suite is not None:
            return load_suite(self.suite)
        return SuiteConfig(name="continual", tasks=list(self.tasks), episodes=self.eval_episodes)

    def _stage_config(self, index: int, task: str, init: str | None, demos: Path | None, out_dir: Path,
                      reference: bool = False):
        """Stage ``index``'s `vla-cl train` config; with checkpoint=best (not for a reference run, whose
        policies are not handed on) it keeps the policy at every in-loop evaluation, the candidates."""
        from vla_cl.updaters.command import build_train_config

        fields = {"updater": {"name": self.updater}, "task": task, "iterations": self.iterations,
                  "seed": self.seed + index, "out_dir": str(out_dir), "progress": self.progress,
                  **({"init": init} if init else {"policy_preset": "default"}),
                  **({"demos": str(demos)} if demos is not None else {})}
        try:
            config = build_train_config(fields, self.train)
            every, kept = config.eval_every, config.snapshot_every
            if self.checkpoint == "best" and not reference and every and not (kept and every % kept == 0):
                require("snapshot_every" not in self.train, "train.snapshot_every", kept,
                        f"a divisor of the stage's eval_every ({every}), or leave it unset: checkpoint=best "
                        "keeps the policy at every in-loop evaluation")
                config = build_train_config({**fields, "snapshot_every": every}, self.train)
            return config
        except ValueError as error:
            raise ValueError(f"invalid value for train (stage {index}, {task}): {error}") from None


def _learns_from_demos(updater: str) -> bool:
    from vla_cl.updaters.registry import get_updater_class

    return get_updater_class(updater).source.needs_demos


# ------------------------------------------------------------------------------------------ running


def _train_stage(config: Any) -> Path:
    """Run (or resume) one `vla-cl train` stage; returns its final policy folder."""
    from vla_cl.updaters.command import run as run_train

    with RunDir.open(config.out_dir, "train", config) as stage_dir:
        run_train(config, stage_dir)
    return stage_dir.path / "artifacts" / "policy"


def during_curve(stage_dir: Path) -> list[float]:
    """The stage task's success at each of the training loop's evaluations (iteration 0 included)."""
    metrics = RunDir(stage_dir, "train").read_metrics()
    return [m["eval/success_rate"] for m in metrics if m.get("eval/success_rate") is not None]


def choose_checkpoint(stage_dir: Path, config: Any, init: str, how: str) -> dict[str, Any]:
    """The policy a finished stage hands on: its iteration, folder and in-loop success on the stage's task.

    ``how`` best: :func:`vla_cl.evaluation.continual.best_checkpoint` of the stage's metrics; final: the last
    iteration. Iteration 0's policy is the stage's ``init``, the last one's ``artifacts/policy``, any other
    the snapshot the loop kept (``ContinualConfig._stage_config`` sets ``snapshot_every`` so that every
    evaluated iteration has one).
    """
    from vla_cl.evaluation.continual import best_checkpoint

    records = RunDir(stage_dir, "train").read_metrics()
    iteration = best_checkpoint(records) if how == "best" else config.iterations
    if iteration == 0:
        folder = init
    elif iteration == config.iterations:
        folder = str(stage_dir / "artifacts" / "policy")
    else:
        folder = str(stage_dir / "artifacts" / "snapshots" / f"iter-{iteration:06d}")
        if not Path(folder).is_dir():
            raise ValueError(f"{stage_dir}: the best in-loop evaluation is at iteration {iteration}, but its policy "
                             f"{folder} was not kept; delete the stage folder to train it again with snapshots")
    success = next((r.get("eval/success_rate") for r in records if r.get("iteration") == iteration), None)
    return {"iteration": iteration, "policy": folder, "success": success}


def heatmap(matrix: np.ndarray, tasks: list[str], path: Path, title: str = "success after each stage") -> Path:
    """The stage x task success matrix as an annotated heat map (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.split("/")[-1] for t in tasks]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 1.2 + 0.7 * matrix.shape[0]))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(tasks)), names, rotation=30, ha="right")
    ax.set_yticks(range(matrix.shape[0]), [f"after stage {i}: {names[i]}" if i < len(names) else f"stage {i}"
                                            for i in range(matrix.shape[0])])
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xlabel("evaluated task")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def matrix_markdown(matrix: np.ndarray, tasks: list[str], metrics: dict[str, Any]) -> str:
    names = [t.split("/")[-1] for t in tasks]
    lines = ["| after stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(matrix):
        lines.append(f"| {i}: {names[i]} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    rows = [("LIBERO FWT (higher is better)", "fwt"),
            ("LIBERO NBT, c_kk = R[k, k] (`nbt`; lower is better; mean over the first K-1 tasks)", "nbt"),
            ("LIBERO NBT, c_kk = best in-loop point (`nbt_inloop_max`, LIBERO's literal; biased upward)",
             "nbt_inloop_max"),
            ("LIBERO AUC (higher is better)", "auc"),
            ("Continual World average performance", "average_performance"),
            ("Continual World forgetting (`forgetting`; mean over all K tasks, the last one's 0 included)",
             "forgetting"),
            ("forgetting, mean over the first K-1 tasks (`forgetting_first_k_minus_1`)",
             "forgetting_first_k_minus_1"),
            ("Continual World forward transfer", "forward_transfer")]
    lines += ["", "| metric | value |", "|---|---|", *(f"| {label} | {fmt(metrics[key])} |" for label, key in rows)]
    return "\n".join(lines) + "\n"


def run(config: ContinualConfig, run_dir: RunDir) -> int:
    from vla_cl.envs.expert_demos import expert_demos, task_slug
    from vla_cl.evaluation.continual import continual_metrics
    from vla_cl.evaluation.runner import Evaluator
    from vla_cl.files import write_text_atomic

    suite = config.suite_config()
    run_dir.begin()  # the stages write into sub-folders: the run has started
    demos: dict[str, Path] = {}
    if _learns_from_demos(config.updater):
        root = run_dir.artifacts / "demos"
        expert_demos(config.tasks, config.demos, config.seed, root, workers=config.workers, log=run_dir.log)
        demos = {t: root / task_slug(t) for t in config.tasks}
    rows, during, reference, chosen = [], [], [], []
    policy: str = config.init
    with Evaluator(suite, workers=config.workers, progress=config.progress) as evaluate:
        for i, task in enumerate(config.tasks):
            stage = run_dir.path / f"stage_{i}"
            print(f"[continual] stage {i}: {config.updater} on {task}", flush=True)
            stage_config = config._stage_config(i, task, policy, demos.get(task), stage)
            _train_stage(stage_config)
            chosen.append({"stage": i, "task": task, **choose_checkpoint(stage, stage_config, policy,
                                                                         config.checkpoint)})
            policy = chosen[-1]["policy"]
            print(f"[continual] stage {i}: {config.checkpoint} checkpoint: iteration {chosen[-1]['iteration']} "
                  f"(in-loop success {chosen[-1]['success']}), {policy}", flush=True)
            result = evaluate(policy, out_dir=stage / "eval", label=f"after stage {i}")
            rows.append([result.success(t) for t in config.tasks])
            during.append(during_curve(stage))
            run_dir.log(event="stage", stage=i, task=task, chosen_iteration=chosen[-1]["iteration"],
                        chosen_policy=policy, success=dict(zip(config.tasks, rows[-1])))
            if config.reference:
                ref = run_dir.path / f"reference_{i}"
                print(f"[continual] reference {i}: {config.updater} on {task} alone, from scratch", flush=True)
                _train_stage(config._stage_config(i, task, None, demos.get(task), ref, reference=True))
                reference.append(during_curve(ref))
    matrix = np.asarray(rows)
    metrics = continual_metrics(matrix, during, reference if config.reference else None).to_dict()
    heatmap(matrix, config.tasks, run_dir.artifact("matrix.png"))
    write_text_atomic(run_dir.path / "matrix.md", matrix_markdown(matrix, config.tasks, metrics))
    run_dir.write_json("summary.json", {"tasks": config.tasks, "matrix": matrix.tolist(), "during": during,
                                        "reference_during": reference or None, "checkpoint": config.checkpoint,
                                        "chosen": chosen, "metrics": metrics, "suite": suite.to_dict()})
    print(matrix_markdown(matrix, config.tasks, metrics))
    return 0
