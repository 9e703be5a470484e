"""The razor experiment's config: which tasks, which base policy, which fine-tuning sweep, how it is measured.

The defaults are the embedded CPU default (``make razor``), designed from measurements on a 2-core CPU:

* pi0: one ``state_token`` policy behaviour-cloned on scripted-expert demonstrations of PickCube, PushCube,
  PullCube and StackCube (150 each). Measured: 78-96 % sampled success on Pick/Push/Pull, ~56 % on Stack.
* new task: ``PickCubeLowGoal-v2``, lift the cube a little and *hold* it at the goal for 3 steps. Its
  instruction's new words start as StackCube's (``init_from``), so pi0 first acts as a stacker, which
  carries the cube to the goal and lets go. Measured on three pi0s trained here: 8-32 % success with a
  3-step hold (the design asks for 5-40 %), 4-16 % with 5 steps, 52-72 % with 1 step.
  StackCube is therefore not a retention task (the hold/release conflict there is direct interference,
  not the KL effect); the retention suite is Pick, Push and Pull (``configs/suite/razor.yaml``).
* sweep: PPO at three learning rates and SFT on 100 expert demonstrations of the new task at three
  learning rates, plus the hybrids ``sft_kl`` (SFT + beta KL(pi0 || pi) on the demonstration states) and
  ``distill`` (SFT on the best PPO policy's own rollouts, its full token distributions). Measured here:
  PPO lr 1e-3 went 12 -> 75 % in 15 iterations, SFT lr 1e-3 12 -> 54 % in 40 iterations.

``preset=paper`` adds REINFORCE (the paper's robot RL), more settings, episodes and seeds;
``preset=smoke`` is a minutes-long run of every stage for tests; ``preset=openvla`` is the same experiment
on the SimplerEnv Bridge scenes with OpenVLA-7B on a GPU (see the preset file).
"""

from __future__ import annotations

import dataclasses

from vla_cl.config import RunConfig, option, require

POLICIES = ("state_token", "openvla")
RL_METHODS = ("ppo", "reinforce")
SFT_METHODS = ("sft",)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One fine-tuning run of the sweep: a method at one setting, as ``vla-cl train`` overrides."""

    method: str  # ppo, reinforce, sft, sft_kl, distill
    setting: str  # what distinguishes it within its method, e.g. "lr=3e-4"
    overrides: tuple[str, ...]  # vla-cl train overrides beyond the experiment's common ones
    iterations: int

    @property
    def id(self) -> str:
        return f"{self.method}_{self.setting}".replace("=", "").replace(".", "p").replace("-", "m")

    @property
    def family(self) -> str:
        """rl, sft or hybrid: what the comparisons group by."""
        return "rl" if self.method in RL_METHODS else "sft" if self.method in SFT_METHODS else "hybrid"


@dataclasses.dataclass
class RazorConfig(RunConfig):
    # --- the stages around the robot experiment
    parity_preset: str = option("quick", "ParityMNIST preset for the mechanism stage (quick, paper or none)")
    parity_workers: int = option(0, "worker processes for the ParityMNIST sweep (0: one per core)",
                                 affects_results=False)
    workers: int = option(0, "worker processes for demonstrations, the sweep and evaluation (0: one per core)",
                          affects_results=False)
    progress: bool = option(False, "show per-run progress bars (stage lines are always printed)",
                            affects_results=False)
    # --- tasks
    prior_tasks: list = option(["maniskill/PickCube-v1", "maniskill/PushCube-v1", "maniskill/PullCube-v1",  # noqa: RUF009
                                "maniskill/StackCube-v1"], "the tasks pi0 is behaviour-cloned on")
    suite: str = option("razor", "the retention suite (configs/suite/NAME.yaml): prior tasks, axes, episodes")
    new_task: str = option("maniskill/PickCubeLowGoal-v2", "the task every method fine-tunes on")
    init_from: str = option("maniskill/StackCube-v1",
                            "the prior task whose instruction the new task's unseen words start from")
    policy: str = option("state_token", f"the policy: {', '.join(POLICIES)}")
    # --- pi0
    demos: int = option(150, "expert demonstrations per prior task for pi0")
    pi0_epochs: float = option(60.0, "behaviour-cloning passes over pi0's demonstrations")
    pi0_lr: float = option(1e-2, "pi0's AdamW peak learning rate (cosine)")
    label_sigma: float = option(2.0, "Gaussian soft labels in bins for pi0 and for the SFT arms (0 = hard labels)")
    # --- the sweep on the new task
    new_task_demos: int = option(100, "expert demonstrations of the new task for the SFT arms")
    ppo_lrs: list = option([1e-4, 3e-4, 1e-3], "PPO learning rates (one run each)")  # noqa: RUF009
    reinforce_lrs: list = option([], "REINFORCE learning rates (one run each; the paper's robot RL)")  # noqa: RUF009
    rl_iterations: int = option(12, "iterations of every RL run (and of distill)")
    rl_episodes: int = option(16, "episodes collected per RL iteration")
    sft_lrs: list = option([3e-4, 1e-3, 3e-3], "SFT learning rates (one run each)")  # noqa: RUF009
    sft_iterations: int = option(40, "SFT iterations (batches of sft_batch demonstration steps)")
    sft_batch: int = option(256, "demonstration steps per SFT iteration")
    sft_kl_coef: float = option(0.1, "beta of the sft_kl hybrid (run at the middle SFT learning rate)")
    distill_lr: float = option(1e-3, "learning rate of distill (SFT on the best RL policy's rollouts)")
    num_envs: int = option(4, "envs stepped together in each training run")
    seeds: int = option(1, "training seeds per setting (seed, seed+1, ...)")
    # --- measurement
    snapshot_episodes: int = option(16, "episodes per task of mid-training policies (in_distribution axis only)")
    probe_episodes: int = option(16, "pi0 episodes on the new task whose states form the forward-KL probe set")
    old_probe_episodes: int = option(8, "pi0 episodes per retention task for the old-task predictors")
    videos: bool = option(True, "rollout videos of pi0, the best RL and the best SFT policy")
    video_size: int = option(160, "side of the video frames in pixels")

    def __post_init__(self) -> None:
        from vla_cl.envs import get_spec
        from vla_cl.envs.experts import has_expert

        require(self.parity_preset in ("quick", "paper", "none"), "parity_preset", self.parity_preset,
                "quick, paper or none")
        require(self.workers >= 0 and self.parity_workers >= 0, "workers", self.workers, "an integer >= 0")
        require(self.policy in POLICIES, "policy", self.policy, f"one of {', '.join(POLICIES)}")
        if self.policy == "openvla":
            raise ValueError(
                "invalid value for policy: 'openvla' runs OpenVLA-7B as pi0 on the SimplerEnv Bridge scenes, whose "
                "SFT arm needs demonstrations of those scenes; the Bridge scenes have no scripted experts and no "
                "demonstration set ships offline, so the razor cannot run it yet. Fine-tune OpenVLA-7B on a Bridge "
                "scene with `vla-cl train preset=openvla_bridge_carrot` and measure retention with `vla-cl eval "
                "suite=bridge base=...`; run the embedded default (policy=state_token) for the whole experiment")
        self.prior_tasks = list(self.prior_tasks)
        for field, task in [("new_task", self.new_task), *(("prior_tasks", t) for t in self.prior_tasks)]:
            try:
                get_spec(task)
            except ValueError as error:
                raise ValueError(f"invalid value for {field}: {error}") from None
        require(len(set(self.prior_tasks)) == len(self.prior_tasks) >= 1, "prior_tasks", self.prior_tasks,
                "a non-empty list of distinct task ids")
        lacking = [t for t in [*self.prior_tasks, self.new_task] if not has_expert(t)]
        require(not lacking, "prior_tasks/new_task", lacking, "tasks with scripted experts (demonstrations)")
        require(self.new_task not in self.prior_tasks, "new_task", self.new_task, "a task pi0 was not trained on")
        require(self.init_from in self.prior_tasks, "init_from", self.init_from, f"one of prior_tasks {self.prior_tasks}")
        suite = self.retention_suite()
        require(self.new_task not in suite.task_ids, "suite", self.suite,
                f"a retention suite without the new task {self.new_task}")
        require(self.init_from not in suite.task_ids, "suite", self.suite,
                f"a retention suite without {self.init_from}, the task the new one starts from (direct "
                "interference would pose as forgetting)")
        outside = [t for t in suite.task_ids if t not in self.prior_tasks]
        require(not outside, "suite", self.suite, f"retention tasks pi0 learned (not in prior_tasks: {outside})")
        require(bool(self.ppo_lrs) or bool(self.reinforce_lrs), "ppo_lrs/reinforce_lrs", [],
                "at least one RL learning rate: the experiment compares RL with SFT")
        require(bool(self.sft_lrs), "sft_lrs", self.sft_lrs, "at least one SFT learning rate")
        for name in ("ppo_lrs", "reinforce_lrs", "sft_lrs"):
            values = getattr(self, name)
            require(all(0 < float(v) <= 1 for v in values), name, values, "learning rates in (0, 1]")
        for name in ("rl_iterations", "sft_iterations"):
            require(getattr(self, name) >= 3, name, getattr(self, name),
                    "an integer >= 3 (two mid-training snapshots and the final policy per run)")
        for name in ("demos", "new_task_demos", "rl_episodes", "sft_batch", "num_envs", "seeds",
                     "snapshot_episodes", "probe_episodes", "old_probe_episodes"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.pi0_epochs > 0 and self.pi0_lr > 0, "pi0_epochs/pi0_lr", (self.pi0_epochs, self.pi0_lr), "> 0")
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins")
        require(self.sft_kl_coef > 0, "sft_kl_coef", self.sft_kl_coef, "> 0")
        require(self.distill_lr > 0, "distill_lr", self.distill_lr, "> 0")
        require(32 <= self.video_size <= 512, "video_size", self.video_size, "32..512")

    def retention_suite(self):
        from vla_cl.evaluation.suite import load_suite

        try:
            return load_suite(self.suite)
        except ValueError as error:
            raise ValueError(str(error)) from None

    def experiment_suite(self):
        """The retention suite with the new task added (same axes, episodes and seeds)."""
        suite = self.retention_suite()
        return suite.replace(name=f"{suite.name} + new task", tasks=[*suite.to_dict()["tasks"], {"task": self.new_task}])

    def trials(self) -> list[Trial]:
        """Every run of the sweep but distill (which needs the best RL run first, see ``distill_trial``)."""
        rl = self.rl_iterations
        snap = max(1, rl // 3)
        sft_snap = max(1, self.sft_iterations // 3)
        out = []
        for seed in range(self.seeds):
            tag = f"_s{seed}" if self.seeds > 1 else ""
            for method, lrs in (("ppo", self.ppo_lrs), ("reinforce", self.reinforce_lrs)):
                for lr in lrs:
                    out.append(Trial(method, f"lr={lr:g}{tag}", (
                        f"updater={method}", f"updater.lr={lr}", f"updater.episodes={self.rl_episodes}",
                        f"iterations={rl}", f"snapshot_every={snap}", f"seed={self.seed + seed}"), rl))
            for lr in self.sft_lrs:
                out.append(Trial("sft", f"lr={lr:g}{tag}", self._sft(lr, sft_snap, seed), self.sft_iterations))
            middle = sorted(self.sft_lrs)[len(self.sft_lrs) // 2]
            out.append(Trial("sft_kl", f"lr={middle:g}_kl={self.sft_kl_coef:g}{tag}", (
                *self._sft(middle, sft_snap, seed, "sft_kl"), f"updater.kl_coef={self.sft_kl_coef}"),
                self.sft_iterations))
        return out

    def _sft(self, lr: float, snap: int, seed: int, method: str = "sft") -> tuple[str, ...]:
        return (f"updater={method}", f"updater.lr={lr}", f"updater.batch_size={self.sft_batch}",
                "updater.minibatches=1", f"updater.label_sigma={self.label_sigma}",
                f"iterations={self.sft_iterations}", f"snapshot_every={snap}", f"seed={self.seed + seed}")

    def distill_trial(self, teacher: str, teacher_id: str, seed: int = 0) -> Trial:
        tag = f"_s{seed}" if self.seeds > 1 else ""
        return Trial("distill", f"from_{teacher_id}{tag}", (
            "updater=distill", f"teacher={teacher}", f"updater.lr={self.distill_lr}",
            f"updater.episodes={self.rl_episodes}", f"iterations={self.rl_iterations}",
            f"snapshot_every={max(1, self.rl_iterations // 3)}", f"seed={self.seed + seed}"), self.rl_iterations)
