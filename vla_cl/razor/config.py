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
``preset=smoke`` is a minutes-long run of every stage for tests. On the SimplerEnv Bridge scenes (pi0 warmed
up on carrot, spoon and cube stacking, fine-tuned on the eggplant scene): ``preset=openvla`` runs OpenVLA-7B
on a GPU, ``preset=openvla_tiny`` a toy-sized random OpenVLA through the same stages on a CPU (tests), and
``preset=vision`` the ``small_vlm`` image policy on CPU budgets (see each preset file for its sizing).

Image policies on the Bridge scenes start from ~0 % on a scene they never saw, where RL gets no reward to
learn from, so ``new_task_warmup`` puts a few demonstrations of the new scene into pi0's warm-up (RL4VLA
likewise warms OpenVLA up on demonstrations of the task before PPO): pi0 starts low on the new task but above
zero. The report says how many.
"""

from __future__ import annotations

import dataclasses
import math

from vla_cl.config import RunConfig, merged, option, require

POLICIES = ("state_token", "small_vlm", "openvla")
WORD_POLICIES = ("state_token", "small_vlm")  # policies with a word vocabulary, whose new words init_from seeds
RL_METHODS = ("ppo", "reinforce")
SFT_METHODS = ("sft",)
BUDGET_METHODS = ("ppo_budget", "reinforce_budget", "sft_budget")  # ``kl_budgets``: their own family
DEMO_METHODS = ("sft", "sft_kl", "sft_budget")  # the trials that learn from the new task's demonstrations


@dataclasses.dataclass(frozen=True, eq=True)
class Trial:
    """One fine-tuning run of the sweep: a method at one setting, as the ``vla-cl train`` fields it sets beyond
    the experiment's common ones (a typed mapping: ``{"updater": {"name": "ppo", "optim": {"lr": 1e-3}}, ...}``)."""

    method: str  # ppo, reinforce, sft, sft_kl, distill
    setting: str  # what distinguishes it within its method, e.g. "lr=3e-4"
    train: dict  # vla-cl train fields beyond the experiment's common ones
    iterations: int

    __hash__ = None  # a mapping inside: trials are compared, never hashed

    @property
    def id(self) -> str:
        return f"{self.method}_{self.setting}".replace("=", "").replace(".", "p").replace("-", "m")

    @property
    def family(self) -> str:
        """rl, sft, budget or hybrid: what the comparisons group by (the finding compares rl with sft only)."""
        return ("rl" if self.method in RL_METHODS else "sft" if self.method in SFT_METHODS else
                "budget" if self.method in BUDGET_METHODS else "hybrid")


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
    prior_tasks: list = option(["maniskill/PickCube-v1", "maniskill/PushCube-v1", "maniskill/PullCube-v1",
                                "maniskill/StackCube-v1"], "the tasks pi0 is behaviour-cloned on")
    suite: str = option("razor", "the retention suite (configs/suite/NAME.yaml): prior tasks, axes, episodes")
    new_task: str = option("maniskill/PickCubeLowGoal-v2", "the task every method fine-tunes on")
    init_from: str | None = option("maniskill/StackCube-v1",
                                   "the prior task whose instruction the new task's unseen words start from "
                                   "(word-vocabulary policies; None: random new words)")
    policy: str = option("state_token", f"the policy: {', '.join(POLICIES)}")
    init: str | None = option(None, "openvla: the pretrained checkpoint pi0 is warmed up from (a hub id such as "
                              "openvla/openvla-7b, or a local folder); None with policy_preset=tiny: a toy OpenVLA")
    policy_preset: str = option("default", "size of a policy built fresh: default or tiny")
    obs_mode: str | None = option(None, "what the policy reads: state, rgb or both (None: state for state_token, "
                                  "rgb for the image policies)")
    image_size: int | None = option(None, "image side an image policy reads (None: small_vlm's 64, the OpenVLA "
                                    "checkpoint's)")
    camera_size: int | None = option(None, "width the tasks' cameras render at before resizing (None: their own, "
                                     "640x480 on the Bridge scenes; smaller is faster on a CPU and not SimplerEnv's "
                                     "protocol)")
    lora_rank: int = option(32, "openvla: LoRA rank of the warm-up and of every fine-tuning run")
    device: str = option("cpu", "torch device for training and evaluation (cuda for OpenVLA-7B)",
                         affects_results=False)
    processes: bool = option(False, "training runs step their envs in worker processes (one per env)",
                             affects_results=False)
    # --- pi0
    demos: int = option(150, "expert demonstrations per prior task for pi0")
    new_task_warmup: int = option(0, "expert demonstrations of the new task in pi0's warm-up (0: none; see the "
                                  "module docstring)")
    pi0_epochs: float = option(60.0, "behaviour-cloning passes over pi0's demonstrations")
    pi0_lr: float = option(1e-2, "pi0's AdamW peak learning rate (cosine)")
    pi0_batch: int = option(256, "demonstration steps per pi0 optimiser step")
    label_sigma: float | None = option(None, "Gaussian soft labels in bins for pi0 and for the SFT arms (0 = hard "
                                       "labels; None: 2 for state_token, 0 for autoregressive policies, see "
                                       "vla_cl.razor.pretrain)")
    # --- the sweep on the new task
    new_task_demos: int = option(100, "expert demonstrations of the new task for the SFT arms")
    ppo_lrs: list = option([1e-4, 3e-4, 1e-3], "PPO learning rates (one run each)")
    reinforce_lrs: list = option([], "REINFORCE learning rates (one run each; the paper's robot RL)")
    rl_iterations: int = option(12, "iterations of every RL run (and of distill)")
    rl_episodes: int = option(16, "episodes collected per RL iteration")
    sft_lrs: list = option([3e-4, 1e-3, 3e-3], "SFT learning rates (one run each)")
    sft_iterations: int = option(40, "SFT iterations (batches of sft_batch demonstration steps)")
    sft_batch: int = option(256, "demonstration steps per SFT iteration")
    sft_kl_coef: float = option(0.1, "beta of the sft_kl hybrid (run at the middle SFT learning rate)")
    kl_budgets: list = option([], "KL budgets B (nats per action on the probe) of the budgeted arms: RL (PPO, else "
                              "REINFORCE) and SFT at their highest learning rate, each kept at or under B by the "
                              "adaptive KL coefficient (vla_cl.updaters.budget); [] = none")
    distill_lr: float = option(1e-3, "learning rate of distill (SFT on the best RL policy's rollouts)")
    num_envs: int = option(4, "envs stepped together in each training run")
    rl_overrides: dict = option({}, "`vla-cl train` fields set in every RL run and distillation, e.g. "
                                "{updater: {optim: {minibatches: 960}}} (a 7B model learns from a few rows at a time)")
    sft_overrides: dict = option({}, "`vla-cl train` fields set in every SFT run (sft, sft_kl)")
    seeds: int = option(1, "training seeds per setting (seed, seed+1, ...)")
    # --- measurement
    snapshot_episodes: int = option(16, "episodes per task of mid-training policies (in_distribution axis only)")
    greedy_retention: bool = option(True, "also evaluate pi0 and the final policies on the retention tasks with "
                                    "argmax actions (in-distribution axis), beside the sampled evaluation")
    probe_episodes: int = option(16, "pi0 episodes on the new task whose states form the forward-KL probe set")
    old_probe_episodes: int = option(8, "pi0 episodes per retention task for the old-task predictors")
    onpolicy_probe_episodes: int = option(0, "each policy's own episodes on the new task whose states form its "
                                          "on-policy forward-KL probe (forward_kl_onpolicy; 0: not measured, the "
                                          "default's budget: about 1 s per policy on 2 cores for 4 episodes)")
    videos: bool = option(True, "rollout videos of pi0, the best RL and the best SFT policy")
    video_size: int = option(160, "side of the video frames in pixels")

    def __post_init__(self) -> None:
        from vla_cl.envs import get_spec
        from vla_cl.envs.experts import has_expert

        require(self.parity_preset in ("quick", "paper", "none"), "parity_preset", self.parity_preset,
                "quick, paper or none")
        require(self.workers >= 0 and self.parity_workers >= 0, "workers", self.workers, "an integer >= 0")
        require(self.policy in POLICIES, "policy", self.policy, f"one of {', '.join(POLICIES)}")
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
        if self.init_from is not None:
            require(self.policy in WORD_POLICIES, "init_from", self.init_from,
                    f"None for policy={self.policy} (it reads instructions through its own tokenizer)")
            require(self.init_from in self.prior_tasks, "init_from", self.init_from,
                    f"one of prior_tasks {self.prior_tasks}")
        suite = self.retention_suite()
        require(self.new_task not in suite.task_ids, "suite", self.suite,
                f"a retention suite without the new task {self.new_task}")
        require(self.init_from not in suite.task_ids, "suite", self.suite,
                f"a retention suite without {self.init_from}, the task the new one starts from (direct "
                "interference would pose as forgetting)")
        outside = [t for t in suite.task_ids if t not in self.prior_tasks]
        require(not outside, "suite", self.suite, f"retention tasks pi0 learned (not in prior_tasks: {outside})")
        from vla_cl.updaters.command import check_train_mapping

        self.rl_overrides, self.sft_overrides = dict(self.rl_overrides), dict(self.sft_overrides)
        for name in ("rl_overrides", "sft_overrides"):
            check_train_mapping(name, getattr(self, name))
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
                     "snapshot_episodes", "probe_episodes", "old_probe_episodes", "pi0_batch", "lora_rank"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.new_task_warmup >= 0, "new_task_warmup", self.new_task_warmup, "an integer >= 0")
        require(self.onpolicy_probe_episodes >= 0, "onpolicy_probe_episodes", self.onpolicy_probe_episodes,
                "an integer >= 0")
        self._check_policy_setup()
        require(self.pi0_epochs > 0 and self.pi0_lr > 0, "pi0_epochs/pi0_lr", (self.pi0_epochs, self.pi0_lr), "> 0")
        if self.label_sigma is None:
            from vla_cl.razor.pretrain import default_label_sigma

            self.label_sigma = default_label_sigma(self.policy)
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins")
        require(self.sft_kl_coef > 0, "sft_kl_coef", self.sft_kl_coef, "> 0")
        require(self.distill_lr > 0, "distill_lr", self.distill_lr, "> 0")
        self.kl_budgets = list(self.kl_budgets)
        require(all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
                    for b in self.kl_budgets), "kl_budgets", self.kl_budgets,
                "a list of finite numbers of nats per action > 0 ([] = no budgeted arms)")
        require(32 <= self.video_size <= 512, "video_size", self.video_size, "32..512")

    def _check_policy_setup(self) -> None:
        """The policy, its checkpoint and the assets, before any work (each fails in a second; the device is
        checked when the run starts, so that a GPU preset still composes and shows its help anywhere)."""
        from vla_cl.envs import get_spec
        from vla_cl.envs.assets import check_assets

        require(self.policy_preset in ("default", "tiny"), "policy_preset", self.policy_preset, "default or tiny")
        require(self.init is None or self.policy == "openvla", "init", self.init,
                "None: only policy=openvla warms up from a pretrained checkpoint")
        require(self.policy != "openvla" or self.init is not None or self.policy_preset == "tiny", "init", self.init,
                "a checkpoint for policy=openvla (openvla/openvla-7b, or a local folder in OpenVLA's layout: "
                "`huggingface-cli download openvla/openvla-7b --local-dir DIR` on a machine with internet, then "
                "init=DIR), or policy_preset=tiny for a toy-sized random OpenVLA")
        if self.camera_size is not None:
            require(16 <= self.camera_size <= 1920, "camera_size", self.camera_size, "16..1920 or None")
        for task in dict.fromkeys([*self.prior_tasks, self.new_task]):  # MissingAssetError names id, folder, command
            check_assets(get_spec(task).assets, needed_by=task)
        self.pretrain_config(out_dir=None)  # the warm-up's own checks (its checkpoint, image size)

    def pretrain_config(self, out_dir: str | None, workers: int = 1):
        """pi0's warm-up as a ``vla-cl pretrain`` config: the prior tasks (and the new task's few warm-up
        demonstrations), the experiment's policy and observations."""
        from vla_cl.razor.pretrain import PretrainConfig

        tasks = [*self.prior_tasks, *([self.new_task] if self.new_task_warmup else [])]
        return PretrainConfig(tasks=tasks, demos=self.demos, policy=self.policy, init=self.init,
                              task_demos={self.new_task: self.new_task_warmup} if self.new_task_warmup else {},
                              policy_preset=self.policy_preset, image_size=self.image_size,
                              camera_size=self.camera_size, obs_mode=self.obs_mode, epochs=self.pi0_epochs, batch_size=self.pi0_batch,
                              lr=self.pi0_lr, label_sigma=self.label_sigma, lora_rank=self.lora_rank, device=self.device,
                              seed=self.seed, workers=workers, progress=self.progress, out_dir=out_dir)

    def env_options(self) -> dict:
        """Options every env of the experiment shares (demonstrations, training, evaluation, probes, videos),
        where they differ from the tasks' defaults."""
        return {} if self.camera_size is None else {"camera_size": self.camera_size}

    def rollout_options(self) -> dict:
        """The envs policies act in (training, probes, videos; not the experts' demonstrations): the shared
        options and the suite's episode length, when it sets one."""
        steps = self.retention_suite().max_episode_steps
        return {**self.env_options(), **({"max_episode_steps": steps} if steps else {})}

    def retention_suite(self):
        from vla_cl.evaluation.suite import load_suite

        try:
            return load_suite(self.suite)
        except ValueError as error:
            raise ValueError(str(error)) from None

    def experiment_suite(self):
        """The retention suite with the new task added (same axes, episodes and seeds)."""
        suite = self.retention_suite()
        suite = suite.replace(name=f"{suite.name} + new task", tasks=[*suite.to_dict()["tasks"], {"task": self.new_task}])
        return suite.with_task_options(self.env_options())

    def trials(self) -> list[Trial]:
        """Every run of the sweep but distill (which needs the best RL run first, see ``distill_trial``)."""
        rl = self.rl_iterations
        out = []
        for seed in range(self.seeds):
            tag = f"_s{seed}" if self.seeds > 1 else ""
            for method, lrs in (("ppo", self.ppo_lrs), ("reinforce", self.reinforce_lrs)):
                for lr in lrs:
                    out.append(Trial(method, f"lr={lr:g}{tag}", self._rl(method, float(lr), seed), rl))
            for lr in self.sft_lrs:
                out.append(Trial("sft", f"lr={lr:g}{tag}", self._sft("sft", float(lr), seed), self.sft_iterations))
            middle = sorted(self.sft_lrs)[len(self.sft_lrs) // 2]
            out.append(Trial("sft_kl", f"lr={middle:g}_kl={self.sft_kl_coef:g}{tag}",
                             self._sft("sft_kl", float(middle), seed, kl_coef=self.sft_kl_coef), self.sft_iterations))
            rl_method, rl_lrs = ("ppo", self.ppo_lrs) if self.ppo_lrs else ("reinforce", self.reinforce_lrs)
            for budget in self.kl_budgets:
                rl_lr, sft_lr = max(float(v) for v in rl_lrs), max(float(v) for v in self.sft_lrs)
                out.append(Trial(f"{rl_method}_budget", f"lr={rl_lr:g}_B={budget:g}{tag}",
                                 self._rl(rl_method, rl_lr, seed, kl_budget=float(budget)), rl))
                out.append(Trial("sft_budget", f"lr={sft_lr:g}_B={budget:g}{tag}",
                                 merged(self._sft("sft", sft_lr, seed), {"kl_budget": float(budget)}),
                                 self.sft_iterations))
        return out

    def _rl(self, method: str, lr: float, seed: int, **train: object) -> dict:
        return merged({"updater": {"name": method, "optim": {"lr": lr}, "episodes": self.rl_episodes},
                       "iterations": self.rl_iterations, "snapshot_every": max(1, self.rl_iterations // 3),
                       "seed": self.seed + seed, **train}, self.rl_overrides)

    def _sft(self, method: str, lr: float, seed: int, **updater: object) -> dict:
        return merged({"updater": {"name": method, "optim": {"lr": lr, "minibatches": 1},
                                   "batch_size": self.sft_batch, "label_sigma": self.label_sigma, **updater},
                       "iterations": self.sft_iterations, "snapshot_every": max(1, self.sft_iterations // 3),
                       "seed": self.seed + seed}, self.sft_overrides)

    def distill_trial(self, teacher: str, teacher_id: str, seed: int = 0) -> Trial:
        tag = f"_s{seed}" if self.seeds > 1 else ""
        train = merged(self._rl("distill", self.distill_lr, seed), {"teacher": teacher})
        return Trial("distill", f"from_{teacher_id}{tag}", train, self.rl_iterations)
