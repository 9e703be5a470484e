"""``vla-cl train``: fine-tune a CPU-scale (or any registered) policy on a task with any updater.

    vla-cl train updater=reinforce task=maniskill/PickCubeLowGoal-v1 init=runs/pi0/artifacts/policy
    vla-cl train updater=sft demos=runs/demos/pick policy=state_token iterations=50 updater.optim.lr=3e-4
    vla-cl train updater=distill teacher=runs/rl/artifacts/policy init=runs/pi0/artifacts/policy

pi0 is ``init`` (a saved policy) or, without it, a fresh ``policy`` built for the task (its state size,
instruction and action statistics; ``policy_preset=tiny`` for a seconds-long smoke run). A new task's
unseen instruction words are added to pi0 first (initialised like ``instruction_init_from``'s, if given),
and PPO gets a freshly initialised value head if pi0 has none; pi0 is what the policy is after that.

Every input is checked when the config is built, before any env or policy exists: the updater's own
options (``updater.<field>``), the task id, the checkpoints, and the demonstrations (present when the
updater learns from them, non-empty, recorded on this task, with actions of the policy's dimension).
Re-running with the same ``out_dir`` resumes from the last checkpoint (see ``vla_cl.updaters.loop``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.runs import RunDir
from vla_cl.updaters.distributed import LearnerConfig
from vla_cl.updaters.loop import LoopConfig, check_device, derived_seed
from vla_cl.updaters.registry import config_from_options, get_updater_class, options_dataclass

PRESETS = ("tiny", "default")
INIT = 100  # derived-seed stream for weights created here (new value heads, new words)
INFERENCE = ("learner", "worker")


@dataclasses.dataclass
class RolloutConfig:
    """Where episodes are collected: the envs in this process (the default) or on Ray env workers, the acting
    policy in the learner's process or on a Ray inference worker. The episodes are the same either way."""

    env_workers: int = option(0, "Ray actors holding the num_envs envs, split among them (0: in this process)",
                              affects_results=False)
    env_worker_cpus: float = option(1.0, "CPUs Ray reserves for each env worker", affects_results=False)
    placement: str = option("pack", "env workers on as few nodes as fit (pack) or on different nodes (spread)",
                            affects_results=False)
    inference: str = option("learner", "who chooses the actions of the updater's own episodes: the learner's "
                            "process, or a Ray worker holding a copy of the policy synced after each update",
                            affects_results=False)
    inference_device: str = option("cpu", "torch device of the inference worker (a GPU is reserved from Ray for "
                                   "cuda)", affects_results=False)

    def __post_init__(self) -> None:
        require(self.env_workers >= 0, "rollout.env_workers", self.env_workers, "an integer >= 0 (0: in-process)")
        require(self.env_worker_cpus > 0, "rollout.env_worker_cpus", self.env_worker_cpus, "a number > 0")
        require_choice("rollout.placement", self.placement, ("pack", "spread"))
        require_choice("rollout.inference", self.inference, INFERENCE)
        try:
            torch.device(self.inference_device)
        except RuntimeError:
            require(False, "rollout.inference_device", self.inference_device, "a torch device string such as cpu")

    @property
    def remote(self) -> bool:
        return self.env_workers > 0 or self.inference == "worker"


def _invalid(field: str, error: Exception) -> ValueError:
    return ValueError(f"invalid value for {field}: {error}")


@dataclasses.dataclass
class TrainConfig(LoopConfig, RunConfig):
    updater: Any = option(None, "the method and its options: an updater's config (PPOConfig, ...), or a mapping "
                          "with its name and the options to change (None: ppo's defaults)")
    task: str = option("maniskill/PickCube-v1", "task id to fine-tune on (vla_cl.envs.list_tasks())")
    policy: str | None = option(None, "policy to build when there is no init (default state_token)")
    policy_preset: str = option("default", "size of a freshly built policy: default or tiny")
    init: str | None = option(None, "pi0: a saved policy checkpoint folder (default: a fresh policy)")
    demos: str | None = option(None, "demonstration folder (`vla-cl demos`) for sft, sft_kl, oracle_sft")
    teacher: str | None = option(None, "teacher policy checkpoint for distill")
    instruction_init_from: str | None = option(None, "initialise the task's new instruction words like this one's")
    lora_rank: int = option(32, "LoRA rank, for policies fine-tuned through adapters (openvla)")
    num_envs: int = option(4, "envs stepped together when collecting episodes")
    processes: bool = option(False, "one worker process per env instead of stepping them in-process")
    max_episode_steps: int | None = option(None, "episode length for training and evaluation (None = task default)")
    camera_size: int | None = option(None, "width the task's camera renders at before images are resized to the "
                                     "policy's input (None: the task's own; see vla_cl.envs.EnvOptions)")
    learner: LearnerConfig = dataclasses.field(default_factory=LearnerConfig, metadata={
        "help": "the learner on several processes (accelerate launch): learner.strategy (auto, single, ddp, fsdp), "
                "learner.mixed_precision, learner.gradient_checkpointing", "affects_results": False})
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig, metadata={
        "help": "where episodes are collected: rollout.env_workers, rollout.inference (learner, worker), ...",
        "affects_results": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        from vla_cl.envs import get_spec

        self.updater = updater_config(self.updater)  # names a bad updater.<field>
        source = get_updater_class(self.updater.name).source  # what the updater learns from
        try:
            get_spec(self.task)
        except ValueError as error:
            raise _invalid("task", error) from None
        require_choice("policy_preset", self.policy_preset, PRESETS)
        require(self.lora_rank >= 1, "lora_rank", self.lora_rank, "an integer >= 1")
        require(self.num_envs >= 1, "num_envs", self.num_envs, "an integer >= 1")
        self._check_rollout()
        if self.max_episode_steps is not None:
            require(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, "None or >= 1")
        if self.camera_size is not None:
            require(16 <= self.camera_size <= 1920, "camera_size", self.camera_size, "16..1920 or None")
        action_dim, reads, side = self._check_policy()
        require(source.needs_teacher or self.teacher is None, "teacher", self.teacher,
                f"None: updater {self.updater.name!r} does not learn from a teacher")
        require(not source.needs_teacher or self.teacher is not None, "teacher", self.teacher,
                f"a policy checkpoint folder: updater {self.updater.name!r} distils a teacher")
        if self.teacher is not None:
            _checkpoint_config("teacher", self.teacher)
        require(source.needs_demos or self.demos is None, "demos", self.demos,
                f"None: updater {self.updater.name!r} does not learn from demonstrations")
        require(not source.needs_demos or self.demos is not None, "demos", self.demos,
                f"a demonstration folder (`vla-cl demos task={self.task} ...`): updater "
                f"{self.updater.name!r} learns from demonstrations")
        if self.demos is not None:
            self._check_demos(action_dim, reads, side)


    def _check_rollout(self) -> None:
        from vla_cl import workers

        r = self.rollout
        require(r.env_workers <= self.num_envs, "rollout.env_workers", r.env_workers,
                f"at most num_envs={self.num_envs} (each env worker holds at least one env)")
        require(not (r.env_workers and self.processes), "processes", self.processes,
                "False with rollout.env_workers > 0 (the env workers are the processes)")
        if r.remote:
            require(workers.ray_installed(), "rollout.env_workers" if r.env_workers else "rollout.inference",
                    r.env_workers if r.env_workers else r.inference,
                    "0 / learner: Ray is not installed (pip install 'vla-cl[ray]' or `make setup`)")
            require(workers.backend(self.ray) == "ray", "ray.executor", self.ray.executor,
                    "auto or ray: rollout workers are Ray actors")

    def _check_policy(self) -> tuple[int, set[str], int | None]:
        """Validate policy/init; returns pi0's action dimension, the observations it reads and its image side."""
        from vla_cl.policies import get_policy_class, list_policies

        if self.policy is not None:
            require_choice("policy", self.policy, list_policies())
        if self.init is None:
            try:
                reads, side = get_policy_class(self.policy or "state_token").fresh_observations(self.policy_preset)
            except ValueError as error:
                raise _invalid("policy", error) from None
            return 7, set(reads), side
        name, reads, side, action_dim = describe_init("init", self.init)
        require(self.policy in (None, name), "policy", self.policy, f"None or {name!r}, the policy in init")
        return action_dim, set(reads), side

    def _check_demos(self, action_dim: int, reads: set[str], side: int | None) -> None:
        from vla_cl.envs.demos import load_demos

        try:
            demos = load_demos(self.demos)
        except ValueError as error:
            raise _invalid("demos", error) from None
        recorded = demos.meta.get("task_id")
        require(recorded == self.task, "demos", self.demos, f"demonstrations of task={self.task} (these are of "
                f"{recorded})")
        dim = demos.arrays["action"].shape[1]
        require(dim == action_dim, "demos", self.demos,
                f"demonstrations with {action_dim}-D actions like the policy (these have {dim}-D actions)")
        missing = sorted(reads - set(demos.arrays))
        require(not missing, "demos", self.demos, f"demonstrations with the {' and '.join(sorted(reads))} "
                f"observations the policy reads (these have obs_mode={demos.meta.get('obs_mode')}; record them "
                f"with `vla-cl demos obs_mode=...`)")
        if "image" in reads:
            recorded_side = int(demos.arrays["image"].shape[1])
            require(recorded_side == side, "demos", self.demos,
                    f"images at the policy's input size {side} px (these were recorded at {recorded_side} px: "
                    f"record them again with `vla-cl demos image_size={side}`)")
            camera = (demos.meta.get("env_options") or {}).get("camera_size")
            require(camera == self.camera_size, "demos", self.demos,
                    f"images rendered at this run's camera_size={self.camera_size} (these were rendered at "
                    f"camera_size={camera}: pass camera_size={camera}, or record them again with "
                    f"`vla-cl demos camera_size={self.camera_size}`)")


def updater_config(value: Any) -> Any:
    """An updater's config from what ``TrainConfig.updater`` was given: a config as it is, options (the command
    line's ``UpdaterOptions`` or a mapping with ``name``) through the registry, None as ppo's defaults."""
    if value is None:
        value = {"name": "ppo"}
    if dataclasses.is_dataclass(value) and isinstance(value, get_updater_class(value.name).config_class):
        return value
    if not (dataclasses.is_dataclass(value) or isinstance(value, dict)) or "name" not in \
            (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value):
        raise _invalid("updater", ValueError(f"{value!r} is not an updater's config or a mapping with its name"))
    return config_from_options(value)


SET_BY_CALLER = ("init", "task", "demos", "teacher", "out_dir")


def check_train_mapping(field: str, mapping: Any, free: bool = False) -> None:
    """Refuse, naming ``field``, a mapping of ``TrainConfig`` fields with a key no field has (``updater``'s keys
    are checked against every registered updater's options); unless ``free``, also the keys the experiment
    sets itself (``SET_BY_CALLER``)."""
    from vla_cl.config import check_keys

    try:
        check_keys(TrainConfig, mapping)
        if isinstance(mapping.get("updater"), dict):
            check_keys(options_dataclass(), mapping["updater"])
    except ValueError as error:
        raise _invalid(field, error) from None
    taken = sorted(set(mapping) & set(SET_BY_CALLER))
    require(free or not taken, field, mapping, f"fields of `vla-cl train` other than {', '.join(SET_BY_CALLER)}, "
            f"which the experiment sets (got {', '.join(taken)})")


def build_train_config(*layers: Any) -> TrainConfig:
    """A ``vla-cl train`` config from typed layers (mappings of its fields, ``updater`` a mapping with the
    updater's ``name`` and options, nested like ``{"optim": {"lr": 1e-3}}``), over ``configs/train.yaml``:
    what the razor's sweep and the continual stages run, validated like the command line's."""
    from vla_cl.config import build_config, config_layers

    return build_config(TrainConfig, *config_layers("train"), *layers)


def train_schema() -> type:
    """``TrainConfig`` as the command line sees it, built when used: ``updater`` typed as the options of every
    updater registered now (``options_dataclass``), so that hydra checks ``updater.<field>`` values and
    ``--help`` lists them; ``__post_init__`` turns those options into the chosen updater's config."""
    options = options_dataclass()
    schema = dataclasses.make_dataclass(
        "TrainConfig", [("updater", options, dataclasses.field(
            default_factory=options, metadata={"help": "the method and its options (updater=NAME)"}))],
        bases=(TrainConfig,))
    schema.__module__ = __name__
    return schema


def _checkpoint_config(field: str, folder: str) -> tuple[str, dict[str, Any]]:
    from vla_cl.policies.checkpoint import read_config_json
    from vla_cl.policies.registry import checkpoint_policy_name

    try:
        return checkpoint_policy_name(folder), read_config_json(folder)
    except ValueError as error:
        raise _invalid(field, error) from None


def resolve_init(field: str, init: str) -> str:
    """A checkpoint folder as given, or the local copy of a hub repo id (``owner/name`` that is no local path;
    only OpenVLA's layout comes from the hub): fetched now, or failing at once offline."""
    import re
    from pathlib import Path

    if Path(init).expanduser().exists() or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", init):
        return init
    from vla_cl.policies.openvla.checkpoint import resolve_checkpoint

    try:
        return str(resolve_checkpoint(init))
    except (RuntimeError, ValueError) as error:
        raise _invalid(field, f"{error} (nor is there a local folder {init!r})") from None


def describe_init(field: str, init: str) -> tuple[str, frozenset[str], int | None, int]:
    """(policy name, observations read, image side, action dimension) of a checkpoint folder or hub repo id."""
    from vla_cl.policies import get_policy_class

    name, saved = _checkpoint_config(field, resolve_init(field, init))
    reads, side, action_dim = get_policy_class(name).checkpoint_observations(saved)
    return name, reads, side, action_dim


# ------------------------------------------------------------------------------------------ building pi0


def observation_mode(reads: set[str]) -> str:
    """The envs' observation mode for policies that together read ``reads``."""
    return "both" if reads == {"image", "state"} else "rgb" if reads == {"image"} else "state"


def planned_observations(config: TrainConfig, loaded: Any, teacher: Any) -> tuple[set[str], int]:
    """What the envs must give: everything pi0 (loaded, or still to be built) and the teacher read, at the
    image side they read (64 when none reads images)."""
    from vla_cl.policies import get_policy_class

    if loaded is not None:
        reads, side = set(loaded.observation_keys), loaded.image_size
    else:
        fresh, side = get_policy_class(config.policy or "state_token").fresh_observations(config.policy_preset)
        reads = set(fresh)
    if teacher is not None:
        reads |= set(teacher.observation_keys)
        side = side or teacher.image_size
    return reads, side or 64


def prepare_pi0(config: TrainConfig, env: Any, updater: Any, instruction: str, loaded: Any = None):
    """pi0 as the run trains it: loaded or built for the task, taught the task's instruction, prepared
    for fine-tuning (adapters, for policies trained through them) and, for PPO, given a value head."""
    from vla_cl.policies import get_policy_class

    spaces = env.single_observation_space.spaces
    state_dim = spaces["state"].shape[0] if "state" in spaces else 0
    if loaded is None:
        policy = get_policy_class(config.policy or "state_token").for_task(
            state_dim=state_dim, action_stats=env.get_attr("action_stats")[0], instructions=[instruction],
            preset=config.policy_preset, value_head=updater.needs_value_head, seed=derived_seed(config.seed, INIT))
    else:
        policy = loaded
        if policy.state_size and policy.state_size != state_dim:
            raise ValueError(f"init holds a policy reading {policy.state_size}-D states; {config.task} has "
                             f"{state_dim}-D states")
        torch.manual_seed(derived_seed(config.seed, INIT, 2))
        added = policy.add_instruction(instruction, init_from=config.instruction_init_from) \
            if not knows(policy, instruction) else []
        if added:
            print(f"[train] added the task's new words {added} to pi0's vocabulary"
                  + (f" (initialised like {config.instruction_init_from!r})" if config.instruction_init_from else ""))
    torch.manual_seed(derived_seed(config.seed, INIT, 3))  # adapters start from the run's seed, not from chance
    policy.prepare_finetuning(lora_rank=config.lora_rank)
    if updater.needs_value_head and not policy.has_value_head:
        policy = policy.with_value_head(derived_seed(config.seed, INIT, 1))
        print(f"[train] pi0 has no value head; added a fresh one for {updater.name}")
    return policy


def knows(policy: Any, instruction: str) -> bool:
    """Whether a word-vocabulary policy has every word of ``instruction`` (others read any text)."""
    encoder = getattr(policy, "instruction", None)
    return encoder is None or all(word in encoder.index for word in _words(instruction))


def _words(text: str) -> list[str]:
    from vla_cl.policies.instructions import split_words

    return split_words(text)


def make_env(config: TrainConfig, obs_mode: str, side: int):
    """The run's envs: in this process, in one process each (``processes``) or on Ray env workers."""
    from vla_cl.envs.vector import make_vector

    options: dict[str, Any] = {"obs_mode": obs_mode, "image_size": side, "camera_size": config.camera_size}
    if config.max_episode_steps is not None:
        options["max_episode_steps"] = config.max_episode_steps
    if config.rollout.env_workers:
        from vla_cl.envs.remote import RayVectorEnv

        return RayVectorEnv(config.task, config.num_envs, config.rollout.env_workers, options=options,
                            cpus=config.rollout.env_worker_cpus, placement=config.rollout.placement,
                            max_replacements=config.ray.retries)
    return make_vector(config.task, config.num_envs, processes=config.processes, **options)


def run_on_ray(config: TrainConfig, run_dir: RunDir) -> int:
    """The command in ``learner.processes`` Ray actors forming one process group (``launch_on_ray``)."""
    from vla_cl import workers
    from vla_cl.updaters.distributed import launch_on_ray

    if workers.backend(config.ray) != "ray" or not workers.ray_installed():
        raise ValueError("invalid value for learner.processes: Ray starts them, and Ray is not installed or "
                         "ray.executor=process; install it (`make setup`) or launch with torchrun")
    if config.out_dir is None:
        config = dataclasses.replace(config, out_dir=str(run_dir.path))  # every process: this run folder
    one = dataclasses.replace(config, learner=dataclasses.replace(config.learner, processes=1))
    gpus = 1.0 if torch.device(config.device).type == "cuda" else 0.0
    print(f"[train] starting {config.learner.processes} learner processes on Ray", flush=True)
    statuses = launch_on_ray(config.learner.processes, _run_rank, (one,), gpus=gpus)
    return int(statuses[0] or 0)


def _run_rank(config: TrainConfig) -> int:
    """One learner process started by Ray: the train command on the shared run folder."""
    from vla_cl.runs import RunDir

    run_dir = RunDir.open(config.out_dir, "train", config)
    try:
        return run(config, run_dir)
    finally:
        run_dir.close()


def reserve_rollout_workers(config: TrainConfig) -> None:
    """Connect to Ray, or start a local instance with room for the rollout workers (at least this machine's
    CPUs): the env workers' CPUs and the inference worker's."""
    import os

    import ray

    from vla_cl import workers

    if ray.is_initialized():
        return
    r = config.rollout
    needed = r.env_workers * r.env_worker_cpus + (1.0 if r.inference == "worker" else 0.0)
    workers.start_ray(config.ray, max(os.cpu_count() or 1, int(-(-needed // 1))))


def start_inference(config: TrainConfig, policy: Any):
    """The run's inference worker (``rollout.inference=worker``), else None."""
    if config.rollout.inference != "worker":
        return None
    from vla_cl.updaters.inference import InferenceWorker

    gpus = 1.0 if torch.device(config.rollout.inference_device).type == "cuda" else 0.0
    return InferenceWorker.start(policy, device=config.rollout.inference_device, gpus=gpus)


# ------------------------------------------------------------------------------------------ the command


def run(config: TrainConfig, run_dir: RunDir) -> int:
    check_device(config.device)  # before anything is loaded or written
    if config.learner.processes > 1:
        return run_on_ray(config, run_dir)
    from vla_cl.envs import get_spec
    from vla_cl.envs.demos import load_demos
    from vla_cl.policies import get_policy_class, load_policy
    from vla_cl.updaters.distributed import Learner
    from vla_cl.updaters.loop import train

    updater = get_updater_class(config.updater.name)(config.updater)
    spec = get_spec(config.task)
    learner = Learner(config.learner, config.device)  # the launcher's processes, when there are several
    if learner.distributed and config.out_dir is None:
        raise ValueError("invalid value for out_dir: None, but the learner runs on several processes; pass "
                         "out_dir=DIR so that they share one run folder")
    if learner.distributed:
        print(f"[train] learner: {learner.strategy} on {learner.world} processes (this is process {learner.rank}; "
              "the first writes the run folder)", flush=True)

    def load(field: str, init: str):
        folder = resolve_init(field, init)
        name = describe_init(field, folder)[0]
        return load_policy(folder, **get_policy_class(name).load_options(spec, config.device, folder))

    teacher = load("teacher", config.teacher) if config.teacher else None
    demos = load_demos(config.demos) if config.demos else None
    loaded = load("init", config.init) if config.init else None
    reads, side = planned_observations(config, loaded, teacher)
    obs_mode = observation_mode(reads)
    if config.rollout.remote:
        reserve_rollout_workers(config)
    env = make_env(config, obs_mode, side)
    inference = None
    try:
        policy = prepare_pi0(config, env, updater, spec.instruction, loaded)
        where = f" on {config.rollout.env_workers} Ray env worker(s)" if config.rollout.env_workers else ""
        print(f"[train] {updater.name} on {config.task}: {policy.name} "
              f"({sum(p.numel() for p in policy.parameters()):,} parameters), {config.iterations} iterations, "
              f"{config.num_envs} env(s){where}, observations: {obs_mode}", flush=True)
        inference = start_inference(config, policy)
        summary = train(policy, updater, env, config, run_dir, seed=config.seed, demos=demos, teacher=teacher,
                        inference=inference, learner=learner)
    finally:
        if inference is not None:
            inference.close()
        env.close()
    final = summary["final"]
    shown = {k: final[k] for k in ("eval/success_rate", "kl/mean", "train/loss") if k in final}
    print(f"[train] done: {json.dumps(shown)}; policy in {run_dir.path / 'artifacts' / 'policy'}")
    return 0
