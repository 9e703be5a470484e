"""Run a policy on a suite: every (task, axis, evaluation seed) through the shared episode collector.

    from vla_cl.evaluation import evaluate, load_suite
    result = evaluate("runs/pi0/artifacts/policy", load_suite("razor"), out_dir="runs/eval/pi0", workers=2)
    result.success("maniskill/PushCube-v1", "position")

The policy is a :class:`~vla_cl.policies.Policy`, a checkpoint folder, ``"expert"`` (the task's scripted
expert) or ``"random"`` (uniform actions). Episodes run through :func:`vla_cl.envs.vector.rollout`, the
collector the training loop uses, on envs made with the same options, so evaluation resets and truncates
exactly as training does.

Jobs. One job is one (task, axis, evaluation seed): an env (or ``num_envs`` of them) of that task with the
axis's options, as freshly created, ``episodes`` episodes from reset seeds ``seed, seed + 1, ...``, and the
policy's sampling drawn from a generator seeded by the evaluation seed. A job's result depends on nothing
else, so results are the same with 1 or N worker processes and in any order. Workers are spawned processes
that keep their policy loaded between jobs; :class:`Evaluator` keeps them alive across policies (a sweep
evaluates many).

Envs kept between jobs. A process keeps the last job's env; the next job takes it when it runs the same
task with the same options (the cell's next seed block; in a worker, also the same cell of the next
policy) instead of creating one. ManiSkill's physics keeps solver and contact state across ordinary resets
(see ``vla_cl.updaters.loop.refresh``; measured here too: PickCube's returns changed in their last bits),
which would make a job's episodes depend on the jobs before it, so a kept env's scene is rebuilt first (a
reset with ``reconfigure=True``): it then behaves as a fresh one, episode for episode
(tests/test_evaluation_envs.py compares the two). Measured with gc frozen: building a Bridge scene again
costs ~0.06 s against ~0.15 s for a new env; on the Panda tasks both cost ~0.06 s. Env creation is ~2 % of
an evaluation's wall clock, the policy's forward passes ~30 % (benchmarks/evaluation.py, table 1b).

Resuming. With ``out_dir``, every finished job is written to ``out_dir/jobs/`` at once (atomically), next
to a fingerprint of the suite and the policy's weights; started again with the same out_dir, finished
jobs are read back instead of run, and a folder holding another policy's or suite's jobs is refused.

Checked before any episode runs: the suite (tasks, axes, options), that the policy's observations exist
in the suite (a policy reading images on a suite with ``obs_mode=state``), that its state size matches
each task's, and that every task has an expert when the policy is ``expert``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from typing_extensions import Self

from vla_cl.evaluation.results import CellResult, SuiteResult
from vla_cl.evaluation.suite import IMAGE_AXES, SuiteConfig
from vla_cl.files import write_json_atomic

BUILTIN = ("expert", "random")
JOBS_FOLDER = "jobs"


class EvaluationConflict(ValueError):
    """``out_dir`` holds the jobs of another policy or suite."""


# ------------------------------------------------------------------------------------------ what is evaluated


@dataclasses.dataclass(frozen=True)
class PolicyInfo:
    """What the evaluation needs to know about a policy before running it."""

    label: str  # how reports name it
    reads: frozenset[str]  # "state" and/or "image"
    state_size: int  # 0 when it reads no state
    image_size: int | None
    fingerprint: str  # changes whenever the weights do


def describe_policy(policy: Any) -> PolicyInfo:
    """``policy``: ``expert``, ``random`` or a Policy instance (see :func:`resolve_policy` for folders)."""
    if isinstance(policy, str) and policy in BUILTIN:
        return PolicyInfo(policy, frozenset({"state"}) if policy == "expert" else frozenset(), 0, None, policy)
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    digest.update(json.dumps(policy.config_dict(), sort_keys=True, default=str).encode())
    return PolicyInfo(policy.name, policy.observation_keys, policy.state_size, policy.image_size, digest.hexdigest())


def _byte_dtype():
    import torch

    return torch.uint8


def obs_mode_for(reads: frozenset[str], suite: SuiteConfig) -> str:
    """The envs' observation mode: the suite's, or what the policy reads."""
    if suite.obs_mode != "auto":
        missing = sorted(reads - {"state": {"state"}, "rgb": {"image"}, "both": {"state", "image"}}[suite.obs_mode])
        if missing:
            raise ValueError(f"invalid value for suite.obs_mode: {suite.obs_mode!r}, but the policy reads "
                             f"{' and '.join(sorted(reads))}; evaluate it on a suite with obs_mode auto or both")
        return suite.obs_mode
    if reads == {"state", "image"}:
        return "both"
    return "rgb" if "image" in reads else "state"


_STATE_SIZES: dict[tuple, int] = {}


def task_state_size(task: str, options: dict[str, Any]) -> int:
    """The length of ``task``'s state vector with ``options`` (one env is created once per process)."""
    from vla_cl.envs import make

    key = (task, tuple(sorted((k, v) for k, v in options.items() if k in ("privileged_state",))))
    if key not in _STATE_SIZES:
        env = make(task, obs_mode="state", **{k: v for k, v in key[1]})
        try:
            _STATE_SIZES[key] = int(env.observation_space["state"].shape[0])
        finally:
            env.close()
    return _STATE_SIZES[key]


def check_policy(policy: Any, info: PolicyInfo, suite: SuiteConfig) -> None:
    """Refuse, before any episode, a policy the suite cannot run (see the module docstring)."""
    obs_mode_for(info.reads, suite)
    if policy == "expert":
        from vla_cl.envs.experts import has_expert

        lacking = [t for t in suite.task_ids if not has_expert(t)]
        if lacking:
            raise ValueError(f"invalid value for policy: 'expert', but {', '.join(lacking)} have no scripted expert")
    if info.state_size:
        for entry in suite.tasks:
            size = task_state_size(entry.task, entry.options)
            if size != info.state_size:
                raise ValueError(f"invalid value for policy: {info.label} reads {info.state_size}-D states, but "
                                 f"{entry.task} gives {size}-D states; evaluate it on tasks it was trained for")


# ------------------------------------------------------------------------------------------ jobs


@dataclasses.dataclass(frozen=True)
class Job:
    task: str
    axis: str
    block: int  # index into suite.seeds

    def filename(self, suite: SuiteConfig) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.task)
        return f"{slug}__{self.axis}__seed{suite.seeds[self.block]}.json"


def plan(suite: SuiteConfig, info: PolicyInfo) -> tuple[list[Job], dict[tuple[str, str], str]]:
    """The jobs to run, and the (task, axis) cells that do not apply to the policy, with the reason."""
    jobs, skipped = [], {}
    for entry in suite.tasks:
        for axis in suite.axes:
            if axis in IMAGE_AXES and "image" not in info.reads:
                skipped[(entry.task, axis)] = "the policy reads no images"
                continue
            jobs += [Job(entry.task, axis, b) for b in range(len(suite.seeds))]
    return jobs, skipped


def _actor(policy: Any, env: Any, task: str, suite: SuiteConfig, seed: int):
    import torch

    if policy == "expert":
        from vla_cl.envs.experts import ExpertPolicy

        return ExpertPolicy(task, env)
    if policy == "random":
        from vla_cl.envs.vector import RandomPolicy

        return RandomPolicy(getattr(env, "single_action_space", env.action_space), seed)
    from vla_cl.updaters.data import PolicyActor

    device = next(policy.parameters()).device
    return PolicyActor(policy, torch.Generator().manual_seed(seed), suite.greedy, device, suite.temperature)


# The env the last job of this process ran on, and what it was made with: (task, envs, options) -> env.
_KEPT: dict[tuple, Any] = {}
SCENE_SEED = 2022  # what ManiSkill builds a new env's scene with; every episode is then reset with its own seed


def job_env(task: str, options: dict[str, Any], n_envs: int) -> Any:
    """An env of ``task`` with ``options`` that behaves as a freshly created one: the previous job's, its
    scene rebuilt, when that job ran the same task with the same options; else a new one (the previous env
    is closed). See the module docstring."""
    from vla_cl.envs import make
    from vla_cl.envs.vector import make_vector

    key = (task, n_envs, json.dumps(options, sort_keys=True, default=str))
    if key in _KEPT:
        _rebuild(_KEPT[key])
        return _KEPT[key]
    release_envs()
    # One env runs bare (the collector takes a VLAEnv); a vector env only pays off when it batches.
    env = make(task, **options) if n_envs == 1 else make_vector(task, n_envs, **options)
    _KEPT[key] = env
    return env


def _rebuild(env: Any) -> None:
    """Rebuild the scene of ``env`` (each sub-env of a vector env), as creating it did."""
    import gymnasium as gym

    rebuild = {"seed": SCENE_SEED, "options": {"reconfigure": True}}
    if isinstance(env, gym.vector.VectorEnv):
        env.call("reset", **rebuild)
    else:
        env.reset(**rebuild)


def release_envs() -> None:
    """Close the env kept for the next job, if any."""
    while _KEPT:
        _KEPT.popitem()[1].close()


def run_job(policy: Any, info: PolicyInfo, suite: SuiteConfig, job: Job, on_episode=None) -> CellResult:
    """One job's episodes (see the module docstring); ``on_episode()`` is called as each one ends. The env
    is kept for the next job (:func:`release_envs` closes it)."""
    import torch

    from vla_cl.envs.vector import rollout

    seed = suite.seeds[job.block]
    # ManiSkill collects garbage whenever it builds or closes a scene; with torch and the simulator
    # loaded that pass costs ~0.2 s here, twice per job. Long-lived objects (modules, the policy) are
    # moved out of the collector's reach first, so it scans only what the job creates.
    gc.freeze()
    options = suite.env_options(suite.task(job.task), job.axis, obs_mode_for(info.reads, suite))
    if info.image_size is not None:
        options["image_size"] = info.image_size
    env = job_env(job.task, options, min(suite.num_envs, suite.episodes))
    on_step = None
    if on_episode is not None:
        on_step = lambda t: on_episode() if t.terminated or t.truncated else None
    try:
        with torch.no_grad():
            episodes = rollout(_actor(policy, env, job.task, suite, seed), env, suite.episodes, seed=seed,
                               on_step=on_step)
    except BaseException:
        release_envs()  # an env stopped mid-episode is not handed to another job
        raise
    return CellResult(job.task, job.axis, [e.seed for e in episodes], [bool(e.success) for e in episodes],
                      [int(e.length) for e in episodes], [float(e.ret) for e in episodes],
                      initial_states=[e.initial_state for e in episodes])


# ------------------------------------------------------------------------------------------ worker processes

_WORKER_POLICIES: dict[str, Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core uses the cores better than threads on small models


def _worker_job(policy_ref: str, info: PolicyInfo, suite_dict: dict, job: Job) -> CellResult:
    policy: Any = policy_ref
    if policy_ref not in BUILTIN:
        if policy_ref not in _WORKER_POLICIES:
            from vla_cl.policies import load_policy

            _WORKER_POLICIES.clear()  # keep one policy loaded: a sweep evaluates them one after another
            _WORKER_POLICIES[policy_ref] = load_policy(policy_ref).eval()
        policy = _WORKER_POLICIES[policy_ref]
    return run_job(policy, info, SuiteConfig(**suite_dict), job)


# ------------------------------------------------------------------------------------------ the evaluator


class Evaluator:
    """Evaluates policies on one suite, with ``workers`` processes kept alive between policies."""

    def __init__(self, suite: SuiteConfig, *, workers: int = 1, progress: bool = True, device: str = "cpu"):
        if workers < 1:
            raise ValueError(f"invalid value for workers: {workers!r} (allowed: an integer >= 1)")
        self.suite, self.workers, self.progress, self.device = suite, workers, progress, device
        # a policy on an accelerator is loaded once, in this process (its jobs batch through suite.num_envs)
        if device != "cpu":
            self.workers = 1
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            from vla_cl.workers import pool

            self._pool = pool(self.workers, initializer=_init_worker)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, policy: Any, out_dir: str | Path | None = None, label: str | None = None) -> SuiteResult:
        start = time.perf_counter()
        suite = self.suite
        runnable, info = resolve_policy(policy, self.device)
        if label:
            info = dataclasses.replace(info, label=label)
        check_policy(policy, info, suite)
        jobs, skipped = plan(suite, info)
        done = _read_finished(out_dir, suite, info) if out_dir is not None else {}
        todo = [job for job in jobs if job not in done]
        total = sum(suite.episodes for _ in todo)
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"eval {Path(info.label).name or info.label}", unit="ep",
                   disable=not self.progress or not todo, dynamic_ncols=True)

        def finished(job: Job, cell: CellResult) -> None:
            done[job] = cell
            if out_dir is not None:
                write_json_atomic(Path(out_dir) / JOBS_FOLDER / job.filename(suite), cell.to_dict())

        try:
            if self.workers == 1 or len(todo) <= 1:
                for job in todo:
                    finished(job, run_job(runnable, info, suite, job, on_episode=lambda: bar.update(1)))
            else:
                self._run_in_workers(policy if isinstance(policy, (str, Path)) else runnable, info, todo, finished, bar)
        finally:
            bar.close()
            release_envs()  # workers keep theirs until they exit
        cells: dict[tuple[str, str], CellResult] = {}
        for entry in suite.tasks:
            for axis in suite.axes:
                if (entry.task, axis) in skipped:
                    cells[(entry.task, axis)] = CellResult(entry.task, axis, not_applicable=skipped[(entry.task, axis)])
                    continue
                blocks = [done[Job(entry.task, axis, b)] for b in range(len(suite.seeds))]
                cells[(entry.task, axis)] = CellResult(
                    entry.task, axis, [s for c in blocks for s in c.seeds], [s for c in blocks for s in c.successes],
                    [n for c in blocks for n in c.lengths], [r for c in blocks for r in c.returns],
                    initial_states=[s for c in blocks for s in c.initial_states])
        result = SuiteResult(suite.to_dict(), info.label, cells, time.perf_counter() - start)
        if out_dir is not None:
            result.write(out_dir)
        return result

    def _run_in_workers(self, policy: Any, info: PolicyInfo, todo: list[Job], finished, bar) -> None:
        staging = None
        ref = policy if isinstance(policy, str) else str(policy) if isinstance(policy, Path) else None
        if ref is None:  # an in-memory policy travels to the workers as a checkpoint
            staging = tempfile.mkdtemp(prefix="vla-cl-eval-")
            ref = str(policy.save_pretrained(Path(staging) / "policy"))
        try:
            futures = {self._executor().submit(_worker_job, ref, info, self.suite.to_dict(), job): job for job in todo}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                job = futures[future]
                finished(job, future.result())
                bar.update(self.suite.episodes)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def resolve_policy(policy: Any, device: str = "cpu") -> tuple[Any, PolicyInfo]:
    """The runnable policy (``expert``, ``random`` or a Policy; a checkpoint folder is loaded onto ``device``)
    and its info."""
    if isinstance(policy, str) and policy in BUILTIN:
        return policy, describe_policy(policy)
    if isinstance(policy, (str, Path)):
        from vla_cl.policies.registry import load_policy_on

        loaded = load_policy_on(policy, device).eval()
        return loaded, dataclasses.replace(describe_policy(loaded), label=str(policy))
    return policy, describe_policy(policy)


def _read_finished(out_dir: str | Path, suite: SuiteConfig, info: PolicyInfo) -> dict[Job, CellResult]:
    """Finished jobs from an earlier, interrupted evaluation into ``out_dir`` (see the module docstring)."""
    folder = Path(out_dir) / JOBS_FOLDER
    stamp = {"suite": suite.to_dict(), "policy": info.fingerprint}
    stamp_file = folder / "fingerprint.json"
    if stamp_file.exists():
        try:
            previous = json.loads(stamp_file.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != json.loads(json.dumps(stamp)):
            raise EvaluationConflict(f"{out_dir} holds an evaluation of another policy or suite; choose another "
                                     "out_dir or delete that folder to start over")
    else:
        write_json_atomic(stamp_file, stamp)
    jobs, _ = plan(suite, info)
    done = {}
    for job in jobs:
        path = folder / job.filename(suite)
        if path.exists():
            try:
                done[job] = CellResult.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, KeyError):
                os.remove(path)  # cannot happen with atomic writes, but a damaged file is simply redone
    return done


def evaluate(policy: Any, suite: SuiteConfig, *, out_dir: str | Path | None = None, workers: int = 1,
             progress: bool = True, label: str | None = None, device: str = "cpu") -> SuiteResult:
    """Evaluate one policy on ``suite`` (see the module docstring); ``workers`` processes run its jobs (on the
    CPU; a policy on another ``device`` runs its jobs in this process)."""
    with Evaluator(suite, workers=workers, progress=progress, device=device) as evaluator:
        return evaluator(policy, out_dir=out_dir, label=label)
