"""Evaluation suites: which tasks, under which generalisation axes, over which seeded episodes.

A suite is a typed config (:class:`SuiteConfig`), written as YAML under ``configs/suite/<name>.yaml``
and loaded with :func:`load_suite` (a name or a path)::

    name: razor
    tasks:
      - task: maniskill/PushCube-v1
      - task: maniskill/PickCubeLowGoal-v2
        options: {max_episode_steps: 50}
    episodes: 50
    seeds: [100000]
    axes: [in_distribution, position, instruction, visual]

Generalisation axes (:data:`AXES`) are environment options (``vla_cl.envs.EnvOptions``), so one suite
runs them all on the same tasks and seeds:

* ``in_distribution``: objects start on the task's training grid, the grid demonstrations and
  fine-tuning use (``layout=grid``);
* ``position``: objects start on held-out positions between grid points (``layout=off_grid``), as
  RL4VLA's execution axis;
* ``instruction``: on the grid, with one of the task's held-out paraphrases (never used in training) as
  the instruction;
* ``visual``: on the grid, with the table's colour and texture and the lighting changed; it applies to
  policies that read images and is reported as not applicable for the others, never dropped.

Seeds. ``seeds`` lists evaluation seeds; under seed s, episode k of every task and axis starts from the
reset seed ``s + k`` (so pi0 and a fine-tuned policy meet the same episodes, pair by pair, and the
in-distribution and instruction axes start from the same positions), and the policy's sampling draws
from a generator seeded by s. Each (task, axis) gets ``episodes * len(seeds)`` episodes. These are
evaluation seeds only; training seeds are the training run's own.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import yaml

from vla_cl.config import option, require

AXES = ("in_distribution", "position", "instruction", "visual")
AXIS_OPTIONS: dict[str, dict[str, str]] = {
    "in_distribution": {"layout": "grid"},
    "position": {"layout": "off_grid"},
    "instruction": {"layout": "grid", "instruction": "paraphrase"},
    "visual": {"layout": "grid", "visual": "shifted"},
}
IMAGE_AXES = ("visual",)  # axes that change nothing a state-only policy reads
VARIED_OPTIONS = ("layout", "instruction", "visual")  # set by the axes, not by a suite's task options


@dataclasses.dataclass
class SuiteTask:
    """One task of a suite and the environment options it runs with (besides the axes' own)."""

    task: str = option("maniskill/PickCube-v1", "task id (vla_cl.envs.list_tasks())")
    options: dict = option({}, "vla_cl.envs.EnvOptions for this task, e.g. {max_episode_steps: 40}")


@dataclasses.dataclass
class SuiteConfig:
    """A suite: tasks x axes x seeded episodes, and how the policy acts during them."""

    name: str = option("custom", "the suite's name (reports show it)")
    tasks: list = option([], "the tasks: a list of {task: ID, options: {...}}")
    episodes: int = option(50, "episodes per task, axis and evaluation seed")
    seeds: list = option([100000], "evaluation seeds: under seed s, episode k starts from reset seed s + k")
    max_episode_steps: int | None = option(None, "episode length for every task (None: each task's default)")
    greedy: bool = option(False, "act with the argmax tokens instead of sampling")
    temperature: float = option(1.0, "sampling temperature (ignored when greedy)")
    axes: list = option(["in_distribution"], f"generalisation axes to run, from: {', '.join(AXES)}")
    num_envs: int = option(1, "envs stepped together per (task, axis, seed); more batches the policy's calls")
    obs_mode: str = option("auto", "observations the envs give: auto (what the policy reads), state, rgb or both")

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, SuiteTask) else SuiteTask(**_task_mapping(t)) for t in self.tasks]
        self.axes, self.seeds = list(self.axes), [int(s) for s in self.seeds]
        require(bool(self.tasks), "tasks", self.tasks, "a non-empty list of {task: ID, options: {...}}")
        ids = [t.task for t in self.tasks]
        require(len(set(ids)) == len(ids), "tasks", ids, "each task once")
        require(self.episodes >= 1, "episodes", self.episodes, "an integer >= 1")
        require(bool(self.seeds) and min(self.seeds) >= 0, "seeds", self.seeds, "a non-empty list of integers >= 0")
        spans = sorted((s, s + self.episodes) for s in self.seeds)
        require(all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "seeds", self.seeds,
                f"seeds at least episodes={self.episodes} apart, so that no episode is run twice")
        if self.max_episode_steps is not None:
            require(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, "None or >= 1")
        require(self.temperature > 0, "temperature", self.temperature, "> 0 (greedy=true for argmax actions)")
        require(bool(self.axes) and all(a in AXES for a in self.axes), "axes", self.axes,
                f"a non-empty list from {list(AXES)}")
        require(len(set(self.axes)) == len(self.axes), "axes", self.axes, "each axis once")
        require(self.num_envs >= 1, "num_envs", self.num_envs, "an integer >= 1")
        require(self.obs_mode in ("auto", "state", "rgb", "both"), "obs_mode", self.obs_mode,
                "one of auto, state, rgb, both")
        for entry in self.tasks:
            self._check_task(entry)

    def _check_task(self, entry: SuiteTask) -> None:
        from vla_cl.envs import EnvOptions, get_spec

        try:
            spec = get_spec(entry.task)
        except ValueError as error:
            raise ValueError(f"invalid value for tasks: {error}") from None
        valid = {f.name for f in dataclasses.fields(EnvOptions)} - set(VARIED_OPTIONS) - {"seed", "obs_mode"}
        unknown = sorted(set(entry.options) - valid)
        require(not unknown, f"tasks[{entry.task}].options", unknown,
                f"EnvOptions fields: {', '.join(sorted(valid))} (layout, instruction and visual come from the axes; "
                "obs_mode from the policy)")
        for axis in self.axes:
            try:
                spec.check_options(EnvOptions(**self.env_options(entry, axis)))
            except ValueError as error:
                raise ValueError(f"invalid value for axes: axis {axis!r} cannot run on {entry.task}: {error}; "
                                 f"drop the axis or the task") from None

    def env_options(self, entry: SuiteTask, axis: str, obs_mode: str = "state") -> dict[str, Any]:
        """The ``vla_cl.envs.make`` options of ``entry`` under ``axis``."""
        options: dict[str, Any] = dict(entry.options)
        if self.max_episode_steps is not None:
            options.setdefault("max_episode_steps", self.max_episode_steps)
        options.update(AXIS_OPTIONS[axis], obs_mode=obs_mode)
        return options

    @property
    def task_ids(self) -> list[str]:
        return [t.task for t in self.tasks]

    def task(self, task_id: str) -> SuiteTask:
        for entry in self.tasks:
            if entry.task == task_id:
                return entry
        raise ValueError(f"task {task_id!r} is not in suite {self.name!r} (its tasks: {', '.join(self.task_ids)})")

    def episode_seeds(self, block: int) -> list[int]:
        return [self.seeds[block] + k for k in range(self.episodes)]

    def replace(self, **changes: Any) -> SuiteConfig:
        """A copy with some fields changed (validated again); ``tasks`` may be a list of task ids."""
        fields = {**self.to_dict(), **changes}
        fields["tasks"] = [t if isinstance(t, (dict, SuiteTask)) else {"task": t} for t in fields["tasks"]]
        return SuiteConfig(**fields)

    def with_task_options(self, options: dict[str, Any]) -> SuiteConfig:
        """A copy whose every task also runs with ``options`` (they win over the task's own): settings a whole
        experiment shares with its training runs, such as the camera size."""
        if not options:
            return self
        tasks = [{"task": t.task, "options": {**t.options, **options}} for t in self.tasks]
        return self.replace(tasks=tasks)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tasks"] = [{"task": t.task, "options": dict(t.options)} for t in self.tasks]
        return out


def _task_mapping(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"task": entry}
    if not isinstance(entry, dict) or set(entry) - {"task", "options"} or "task" not in entry:
        raise ValueError(f"invalid value for tasks: {entry!r} (allowed: a task id, or a mapping with 'task' and "
                         "optional 'options')")
    return {"task": entry["task"], "options": dict(entry.get("options") or {})}


def suite_dir() -> Path | None:
    """``configs/suite/`` (the repository's, or under ``$VLA_CL_CONFIG_DIR``)."""
    from vla_cl.config import config_dir

    root = config_dir()
    return None if root is None else root / "suite"


def list_suites() -> list[str]:
    folder = suite_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None and folder.is_dir() else []


def load_suite(name_or_path: str | Path, **overrides: Any) -> SuiteConfig:
    """A suite by name (``configs/suite/<name>.yaml``) or from a YAML file; ``overrides`` replace fields."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        folder = suite_dir()
        path = folder / f"{name_or_path}.yaml" if folder is not None else path
    if not path.is_file():
        raise ValueError(f"invalid value for suite: {str(name_or_path)!r} is neither a suite name "
                         f"(known: {', '.join(list_suites()) or 'none'}) nor a suite YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"invalid value for suite: {path} is not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"invalid value for suite: {path} must hold a mapping of suite fields")  # noqa: TRY004 (a malformed suite file, not a caller type error)
    known = {f.name for f in dataclasses.fields(SuiteConfig)}
    unknown = sorted(set(data) - known)
    require(not unknown, f"suite {path.name}", unknown, f"suite fields: {', '.join(sorted(known))}")
    data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return SuiteConfig(**data)
