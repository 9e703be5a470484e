"""The task registry: every simulated task, under one id scheme, created through one function.

Task ids are ``<suite>/<name>`` (``maniskill/PickCube-v1``, ``simpler/widowx_carrot_on_plate``).
A task module registers :class:`TaskSpec` entries in ``TASKS`` (a :class:`vla_cl.registry.Registry`) when
imported; :data:`TASK_MODULES` lists those modules so that ``list_tasks()`` and ``make()`` import them
only when asked (a module appended later is imported on the next lookup), and the simulator only when a
task is created.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vla_cl.config import option, require, require_choice
from vla_cl.registry import Registry, load_reference

# Modules that register tasks when imported (lazily, on first lookup).
TASK_MODULES: list[str] = ["vla_cl.envs.panda", "vla_cl.envs.bridge"]

OBS_MODES = ("state", "rgb", "both")
OUT_OF_RANGE = ("clip", "refuse")
LAYOUTS = ("grid", "off_grid", "random")
INSTRUCTIONS = ("default", "paraphrase")
VISUALS = ("default", "shifted")


@dataclasses.dataclass
class EnvOptions:
    """Options every task accepts (``vla_cl.envs.make(task_id, **options)``)."""

    obs_mode: str | None = option(None, "what observations carry: state (vector), rgb (image) or both; "
                                     "None = the task's default (state; rgb for the SimplerEnv scenes)")
    image_size: int = option(224, "side of the square observation image in pixels (rgb/both)")
    render_size: int | None = option(None, "side of frames from env.render() (videos); None = no render camera")
    camera_size: int | None = option(None, "width in pixels the observation camera renders at before the image "
                                        "is resized to image_size (height keeps the camera's aspect); None = the "
                                        "task's own (640x480 on the SimplerEnv scenes, as their protocol; "
                                        "image_size on the Panda tasks)")
    control_freq: int | None = option(None, "control frequency in Hz where the backend allows; None = task default")
    max_episode_steps: int | None = option(None, "episode length; None = the task's default")
    privileged_state: bool = option(True, "append object/goal state to proprioception (for CPU-scale policies)")
    out_of_range: str = option("clip", "actions outside the action space: clip them or refuse (ValueError)")
    seed: int | None = option(None, "seed for the first reset when reset() gets none")
    layout: str = option("grid", "initial object positions: grid (the training grid), off_grid (held-out points "
                         "between grid points) or random (the simulator's own continuous draw)")
    instruction: str = option("default", "the episode's instruction: default (the task's) or paraphrase (one of "
                              "the task's held-out paraphrases, drawn per episode from its seed)")
    visual: str = option("default", "scene appearance: default, or shifted (table colour and texture and the "
                         "lighting drawn per episode from its seed; changes images only)")

    def __post_init__(self) -> None:
        if self.obs_mode is not None:
            require_choice("obs_mode", self.obs_mode, OBS_MODES)
        require_choice("out_of_range", self.out_of_range, OUT_OF_RANGE)
        require_choice("layout", self.layout, LAYOUTS)
        require_choice("instruction", self.instruction, INSTRUCTIONS)
        require_choice("visual", self.visual, VISUALS)
        require(16 <= self.image_size <= 1024, "image_size", self.image_size, "16..1024")
        if self.render_size is not None:
            require(16 <= self.render_size <= 1024, "render_size", self.render_size, "16..1024 or None")
        if self.camera_size is not None:
            require(16 <= self.camera_size <= 1920, "camera_size", self.camera_size, "16..1920 or None")
        if self.control_freq is not None:
            require(self.control_freq > 0, "control_freq", self.control_freq, "a positive integer or None")
        if self.max_episode_steps is not None:
            require(self.max_episode_steps > 0, "max_episode_steps", self.max_episode_steps, "a positive integer")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the registry knows about a task before creating it."""

    task_id: str
    factory: str  # "module:function"; called as factory(spec, options) -> gymnasium.Env
    backend_id: str  # the simulator's own id, e.g. "PickCube-v1"
    instruction: str  # the default language instruction (scenes may vary it per episode)
    max_episode_steps: int
    assets: tuple[str, ...] = ()  # asset ids the task needs (ManiSkill's download names)
    description: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # task-specific settings the factory reads
    paraphrases: tuple[str, ...] = ()  # held-out rewordings of the instruction (never used in training)
    default_obs_mode: str = "state"  # what make() gives when obs_mode is not asked for
    action_dataset: str | None = None  # the dataset convention of the task's actions (VLA checkpoints' unnorm_key)
    layouts: tuple[str, ...] = LAYOUTS  # the EnvOptions.layout values the task supports
    visuals: tuple[str, ...] = VISUALS  # the EnvOptions.visual values the task supports

    def check_options(self, options: EnvOptions) -> None:
        """Refuse a variation the task cannot produce, naming the option and what the task offers."""
        if options.layout not in self.layouts:
            raise ValueError(f"task {self.task_id} does not support layout={options.layout!r} "
                             f"(it supports: {', '.join(self.layouts)})")
        if options.visual not in self.visuals:
            raise ValueError(f"task {self.task_id} does not support visual={options.visual!r} "
                             f"(it supports: {', '.join(self.visuals)})")
        if options.instruction == "paraphrase" and not self.paraphrases:
            raise ValueError(f"task {self.task_id} has no held-out paraphrases, so instruction='paraphrase' "
                             "is not available for it")


def _check_spec(task_id: str, spec: Any) -> None:
    if not isinstance(spec, TaskSpec) or spec.task_id != task_id:
        raise TypeError(f"task id {task_id!r} is registered as {spec!r}, not a TaskSpec with that id")


# Filled by the modules in TASK_MODULES when a lookup first imports them.
TASKS: Registry[TaskSpec] = Registry("task id", check=_check_spec, modules=TASK_MODULES)


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task (called by the task modules at import; registering the same spec again is a no-op)."""
    TASKS.register(spec.task_id, spec)
    return spec


def list_tasks(suite: str | None = None) -> list[str]:
    """All registered task ids, sorted; ``suite`` filters by prefix (``"maniskill"``, ``"simpler"``)."""
    return [t for t in TASKS.names() if suite is None or t.split("/", 1)[0] == suite]


def get_spec(task_id: str) -> TaskSpec:
    return TASKS.get(task_id)


def make(task_id: str, **options: Any):
    """Create a task behind the VLA-convention interface (see :mod:`vla_cl.envs.wrapper`)."""
    spec = get_spec(task_id)
    valid = {f.name for f in dataclasses.fields(EnvOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for make({task_id!r}); valid options: {sorted(valid)}")
    env_options = EnvOptions(**options)
    if env_options.obs_mode is None:
        env_options = dataclasses.replace(env_options, obs_mode=spec.default_obs_mode)
    spec.check_options(env_options)
    return load_reference(spec.factory)(spec, env_options)
