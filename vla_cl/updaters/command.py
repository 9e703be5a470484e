"""``vla-cl train``: fine-tune a CPU-scale (or any registered) policy on a task with any updater.

    vla-cl train updater=reinforce task=maniskill/PickCubeLowGoal-v1 init=runs/pi0/artifacts/policy
    vla-cl train updater=sft demos=runs/demos/pick policy=state_token iterations=50 updater.lr=3e-4
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
from vla_cl.updaters.loop import LoopConfig, derived_seed
from vla_cl.updaters.registry import config_from_options, get_updater_class, options_dataclass

UpdaterOptions = options_dataclass()
PRESETS = ("tiny", "default")
STATE_ONLY_POLICIES = ("state_token",)  # every other policy reads images
INIT = 100  # derived-seed stream for weights created here (new value heads, new words)


def _invalid(field: str, error: Exception) -> ValueError:
    return ValueError(f"invalid value for {field}: {error}")


@dataclasses.dataclass
class TrainConfig(LoopConfig, RunConfig):
    updater: UpdaterOptions = dataclasses.field(  # type: ignore[valid-type]
        default_factory=UpdaterOptions, metadata={"help": "the method and its options (updater=NAME)"}
    )
    task: str = option("maniskill/PickCube-v1", "task id to fine-tune on (vla_cl.envs.list_tasks())")
    policy: str | None = option(None, "policy to build when there is no init (default state_token)")
    policy_preset: str = option("default", "size of a freshly built policy: default or tiny")
    init: str | None = option(None, "pi0: a saved policy checkpoint folder (default: a fresh policy)")
    demos: str | None = option(None, "demonstration folder (`vla-cl demos`) for sft, sft_kl, oracle_sft")
    teacher: str | None = option(None, "teacher policy checkpoint for distill")
    instruction_init_from: str | None = option(None, "initialise the task's new instruction words like this one's")
    num_envs: int = option(4, "envs stepped together when collecting episodes")
    processes: bool = option(False, "one worker process per env instead of stepping them in-process")
    max_episode_steps: int | None = option(None, "episode length for training and evaluation (None = task default)")

    def __post_init__(self) -> None:
        super().__post_init__()
        from vla_cl.envs import get_spec

        self.updater_config()  # names a bad updater.<field>
        source = get_updater_class(self.updater.name).source
        try:
            get_spec(self.task)
        except ValueError as error:
            raise _invalid("task", error) from None
        require_choice("policy_preset", self.policy_preset, PRESETS)
        require(self.num_envs >= 1, "num_envs", self.num_envs, "an integer >= 1")
        if self.max_episode_steps is not None:
            require(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, "None or >= 1")
        action_dim, reads = self._check_policy()
        require(source == "teacher" or self.teacher is None, "teacher", self.teacher,
                f"None: updater {self.updater.name!r} does not learn from a teacher")
        require(source != "teacher" or self.teacher is not None, "teacher", self.teacher,
                f"a policy checkpoint folder: updater {self.updater.name!r} distils a teacher")
        if self.teacher is not None:
            _checkpoint_config("teacher", self.teacher)
        require(source == "demos" or self.demos is None, "demos", self.demos,
                f"None: updater {self.updater.name!r} does not learn from demonstrations")
        require(source != "demos" or self.demos is not None, "demos", self.demos,
                f"a demonstration folder (`vla-cl demos task={self.task} ...`): updater "
                f"{self.updater.name!r} learns from demonstrations")
        if self.demos is not None:
            self._check_demos(action_dim, reads)

    def updater_config(self):
        return config_from_options(self.updater)

    def _check_policy(self) -> tuple[int, set[str]]:
        """Validate policy/init; returns pi0's action dimension and the observations it reads."""
        from vla_cl.policies import list_policies

        if self.policy is not None:
            require_choice("policy", self.policy, list_policies())
        if self.init is None:  # a fresh policy reads the task's state, and images unless it is state-only
            name = self.policy or "state_token"
            return 7, {"state"} if name in STATE_ONLY_POLICIES else {"state", "image"}
        name, config = _checkpoint_config("init", self.init)
        require(self.policy in (None, name), "policy", self.policy, f"None or {name!r}, the policy in init")
        reads = set() if name in STATE_ONLY_POLICIES else {"image"}
        if name in STATE_ONLY_POLICIES or (config.get("config") or {}).get("state_dim"):
            reads.add("state")
        return int(config.get("action_dim", 7)), reads

    def _check_demos(self, action_dim: int, reads: set[str]) -> None:
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


def _checkpoint_config(field: str, folder: str) -> tuple[str, dict[str, Any]]:
    from vla_cl.policies.checkpoint import read_config_json
    from vla_cl.policies.registry import checkpoint_policy_name

    try:
        return checkpoint_policy_name(folder), read_config_json(folder)
    except ValueError as error:
        raise _invalid(field, error) from None


# ------------------------------------------------------------------------------------------ building pi0


def observation_mode(policies: list) -> str:
    """What the envs must observe for these policies: instances, or names of policies still to be built
    (a fresh policy reads images if it is not state-only, and the task's state in any case)."""
    needs: set[str] = set()
    for p in policies:
        if p is None:
            continue
        name = p if isinstance(p, str) else p.name
        if name not in STATE_ONLY_POLICIES:
            needs.add("image")
        if isinstance(p, str) or name in STATE_ONLY_POLICIES or getattr(p, "state_dim", 0):
            needs.add("state")
    return "both" if needs == {"image", "state"} else "rgb" if needs == {"image"} else "state"


def image_size(policy: Any, preset: str) -> int | None:
    """The image side a policy (instance, or name of one to build with ``preset``) reads, if it reads images."""
    from vla_cl.policies import get_policy_class

    if policy is None:
        return None
    if isinstance(policy, str):
        if policy in STATE_ONLY_POLICIES:
            return None
        config = get_policy_class(policy).tiny_config() if preset == "tiny" else {}
        return int(config.get("image_size", 64))
    vision = getattr(policy, "vision", None)
    return getattr(vision, "image_size", 224) if policy.name not in STATE_ONLY_POLICIES else None


def fresh_policy(name: str, preset: str, state_dim: int, action_stats: dict, instruction: str,
                 value_head: bool, seed: int):
    """A new policy for a task: its state size, instruction and action statistics."""
    from vla_cl.policies import get_policy_class, make_policy
    from vla_cl.policies.instructions import split_words
    from vla_cl.tokenizer import ActionTokenizer, NormStats

    cls = get_policy_class(name)
    options = dict(cls.tiny_config()) if preset == "tiny" else {}
    options.update(instructions=[instruction], value_head=value_head, state_dim=state_dim)
    if name != "state_token":
        options["max_words"] = max(options.get("max_words", 16), len(split_words(instruction)))
    stats = NormStats(action_stats["q01"], action_stats["q99"], action_stats["mask"])
    torch.manual_seed(derived_seed(seed, INIT))
    return make_policy(name, tokenizer=ActionTokenizer(256, 256, stats), **options)


def with_value_head(policy, seed: int):
    """The same policy with a freshly initialised value head (its other weights copied)."""
    config = policy.config_dict()
    if "value_head" not in config:
        raise ValueError(f"policy {policy.name!r} cannot be given a value head; PPO needs one")
    torch.manual_seed(derived_seed(seed, INIT, 1))
    grown = type(policy)(tokenizer=policy.tokenizer, **{**config, "value_head": True})
    missing, unexpected = grown.load_state_dict(policy.state_dict(), strict=False)
    added = {name for name, _ in grown.named_parameters()} - {name for name, _ in policy.named_parameters()}
    if unexpected or set(missing) != added:
        raise ValueError(f"adding a value head changed more than the head: missing {missing}, unexpected {unexpected}")
    return grown


def prepare_pi0(config: TrainConfig, env: Any, updater: Any, instruction: str, loaded: Any = None):
    """pi0 as the run trains it: loaded or built, with the task's words and (for PPO) a value head."""
    state_dim = env.single_observation_space["state"].shape[0] if "state" in env.single_observation_space.spaces \
        else 0
    if loaded is None:
        policy = fresh_policy(config.policy or "state_token", config.policy_preset, state_dim,
                              env.get_attr("action_stats")[0], instruction, updater.needs_value_head, config.seed)
    else:
        policy = loaded
        if getattr(policy, "state_dim", 0) and policy.state_dim != state_dim:
            raise ValueError(f"init holds a policy reading {policy.state_dim}-D states; {config.task} has "
                             f"{state_dim}-D states")
        if hasattr(policy, "add_instruction"):
            unseen = [w for w in _words(instruction) if w not in policy.instruction.index]
            if unseen:
                torch.manual_seed(derived_seed(config.seed, INIT, 2))
                added = policy.add_instruction(instruction, init_from=config.instruction_init_from)
                print(f"[train] added the task's new words {added} to pi0's vocabulary"
                      + (f" (initialised like {config.instruction_init_from!r})" if config.instruction_init_from
                         else ""))
        if updater.needs_value_head and not policy.has_value_head:
            policy = with_value_head(policy, config.seed)
            print(f"[train] pi0 has no value head; added a fresh one for {updater.name}")
    return policy


def _words(text: str) -> list[str]:
    from vla_cl.policies.instructions import split_words

    return split_words(text)


def make_env(config: TrainConfig, obs_mode: str, side: int):
    from vla_cl.envs.vector import make_vector

    options: dict[str, Any] = {"obs_mode": obs_mode, "image_size": side}
    if config.max_episode_steps is not None:
        options["max_episode_steps"] = config.max_episode_steps
    return make_vector(config.task, config.num_envs, processes=config.processes, **options)


# ------------------------------------------------------------------------------------------ the command


def run(config: TrainConfig, run_dir: RunDir) -> int:
    from vla_cl.envs import get_spec
    from vla_cl.envs.demos import load_demos
    from vla_cl.policies import load_policy
    from vla_cl.updaters.loop import train

    updater = get_updater_class(config.updater.name)(config.updater_config())
    teacher = load_policy(config.teacher) if config.teacher else None
    demos = load_demos(config.demos) if config.demos else None
    loaded = load_policy(config.init) if config.init else None
    planned = loaded if loaded is not None else config.policy or "state_token"
    obs_mode = observation_mode([planned, teacher])
    sizes = [image_size(p, config.policy_preset) for p in (planned, teacher)]
    env = make_env(config, obs_mode, next((s for s in sizes if s is not None), 64))
    try:
        policy = prepare_pi0(config, env, updater, get_spec(config.task).instruction, loaded)
        print(f"[train] {updater.name} on {config.task}: {policy.name} "
              f"({sum(p.numel() for p in policy.parameters()):,} parameters), {config.iterations} iterations, "
              f"{config.num_envs} env(s), observations: {obs_mode}", flush=True)
        summary = train(policy, updater, env, config, run_dir, seed=config.seed, demos=demos, teacher=teacher)
    finally:
        env.close()
    final = summary["final"]
    shown = {k: final[k] for k in ("eval/success_rate", "kl/mean", "train/loss") if k in final}
    print(f"[train] done: {json.dumps(shown)}; policy in {run_dir.artifacts / 'policy'}")
    return 0
