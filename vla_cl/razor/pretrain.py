"""``vla-cl pretrain``: a multi-task pi0 by behaviour cloning on scripted-expert demonstrations.

    vla-cl pretrain tasks=[maniskill/PickCube-v1,maniskill/PushCube-v1] demos=150 out_dir=runs/pi0
    vla-cl pretrain policy=small_vlm tasks=[simpler/widowx_carrot_on_plate,simpler/widowx_spoon_on_towel] \
        camera_size=160 demos=50
    vla-cl pretrain policy=openvla init=openvla/openvla-7b device=cuda tasks=[simpler/...] demos=75

One instruction-conditioned policy learns several tasks at once: each task's expert is recorded on the
training grid (``vla-cl demos``' collector; ``artifacts/demos/<task>/``, reused when the run is started
again), the sets are merged with each episode keeping its task's instruction, and the one training loop
runs ``sft`` on them with no env (there is no single task to evaluate during training). The policy lands
in ``artifacts/policy`` (reload it with ``vla_cl.policies.load_policy``), and its success per task is then
measured through a suite (``suite=NAME``, or by default the pretraining tasks on the in-distribution axis)
into ``eval/``.

Measuring itself is why this sits above ``vla_cl.evaluation``, beside the razor's other stages (the razor's
first stage runs it), rather than among the updaters it drives.

Policies. ``state_token`` and ``small_vlm`` are built fresh for the tasks (their state size, instructions and
action statistics). ``openvla`` warms up a pretrained OpenVLA (``init=``: a hub id or a local folder in
OpenVLA's layout, loaded with the tasks' action statistics, ``bridge_orig`` on the Bridge scenes) through
LoRA (``lora_rank``), as RL4VLA warms OpenVLA up on ManiSkill demonstrations before PPO; its checkpoint
holds the adapters and names the base, a few MB. ``policy=openvla policy_preset=tiny`` (no init) warms up a
toy-sized random OpenVLA instead: the same code path on a CPU. Image policies' demonstrations are recorded
at the policy's own input size (``image_size``: small_vlm's, or the OpenVLA checkpoint's), the Bridge
camera at ``camera_size`` (None: SimplerEnv's 640x480).

Labels (``label_sigma=None``: by the policy). ``state_token`` learns from Gaussian soft labels (sigma 2
bins): the experts' actions vary smoothly with the state, and a 256-way head trained on hard labels fits that
ordering slowly. Measured on this machine (Pick/Push/Pull/Stack, 200 demos each, 60 epochs, state_token): hard
labels at lr 1e-3 gave 13-30 % sampled PickCube success; soft labels with lr 1e-2 gave 87 %. Autoregressive
policies (``small_vlm``, OpenVLA) learn from hard labels: they are teacher-forced on the demonstrated tokens
while soft labels teach them to spread their own, so they learn to lean on the exact value of the token before,
which their own samples then lack. Measured (small_vlm, Bridge carrot/spoon/stack, 50 demos each, privileged
state, 30 epochs, lr 1e-3): soft labels 0/16 and 0/16 successes on carrot and spoon, decoding 6 bins off the
demonstrated y token given its own x (0.7 when fed the demonstrated x); hard labels 5/16 and 2/16.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.envs.expert_demos import expert_demos
from vla_cl.runs import RunDir
from vla_cl.stages import resolve_workers

POLICIES = ("state_token", "small_vlm", "openvla")
IMAGE_POLICIES = ("small_vlm", "openvla")
DEFAULT_TASKS = ["maniskill/PickCube-v1", "maniskill/PushCube-v1", "maniskill/PullCube-v1", "maniskill/StackCube-v1"]
SMALL_VLM_IMAGE = 64  # small_vlm's default input side


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    tasks: list = option(list(DEFAULT_TASKS), "tasks to learn (each needs a scripted expert)")
    demos: int = option(150, "expert episodes kept per task (successful ones)")
    task_demos: dict = option({}, "episodes for some tasks where they differ from demos, {task: n}")
    policy: str = option("state_token", f"the policy to train: {', '.join(POLICIES)}")
    init: str | None = option(None, "openvla: the pretrained checkpoint to warm up (a hub id such as "
                              "openvla/openvla-7b, or a local folder in OpenVLA's layout)")
    policy_preset: str = option("default", "size of a policy built fresh: default or tiny (openvla without init: "
                                "a toy-sized random OpenVLA)")
    obs_mode: str | None = option(None, "observations recorded and read: state, rgb or both (None: what the policy "
                                  "reads: state for state_token, rgb for small_vlm and openvla)")
    image_size: int | None = option(None, f"image side the policy reads and demonstrations are recorded at (None: "
                                    f"{SMALL_VLM_IMAGE} for small_vlm, the checkpoint's for openvla)")
    camera_size: int | None = option(None, "width the tasks' cameras render at before images are resized (None: "
                                     "each task's own; see vla_cl.envs.EnvOptions.camera_size)")
    epochs: float = option(60.0, "passes over the merged demonstrations")
    batch_size: int = option(256, "demonstration samples per optimiser step")
    lr: float = option(1e-2, "AdamW peak learning rate (cosine decay to 0)")
    label_sigma: float | None = option(None, "Gaussian soft labels, sigma in bins (0 = hard labels; None: 2 for "
                                       "state_token, 0 for autoregressive policies); see the module docstring")
    hidden: list = option([256, 256], "state_token: hidden layer widths")
    lora_rank: int = option(32, "openvla: LoRA rank of the warm-up adapters")
    device: str = option("cpu", "torch device to train on: cpu, cuda, cuda:1, ...", affects_results=False)
    suite: str | None = option(None, "suite to measure pi0 on (None: the pretraining tasks, in_distribution)")
    eval_episodes: int = option(50, "episodes per task when suite is None")
    workers: int = option(0, "worker processes for demonstrations and evaluation (0: one per core)",
                          affects_results=False)
    progress: bool = option(True, "show progress bars", affects_results=False)

    def __post_init__(self) -> None:
        from vla_cl.envs import get_spec
        from vla_cl.envs.experts import has_expert

        self.tasks = list(self.tasks)
        self.task_demos = {str(k): int(v) for k, v in dict(self.task_demos).items()}
        require(bool(self.tasks) and len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks,
                "a non-empty list of distinct task ids")
        for task in self.tasks:
            try:
                get_spec(task)
            except ValueError as error:
                raise ValueError(f"invalid value for tasks: {error}") from None
            require(has_expert(task), "tasks", task, "tasks with a scripted expert (vla_cl.envs.experts)")
        require(self.demos >= 1, "demos", self.demos, "an integer >= 1")
        require(set(self.task_demos) <= set(self.tasks) and all(n >= 1 for n in self.task_demos.values()),
                "task_demos", self.task_demos, "{task: n >= 1} for tasks in tasks")
        require_choice("policy", self.policy, POLICIES)
        require_choice("policy_preset", self.policy_preset, ("default", "tiny"))
        if self.obs_mode is None:
            self.obs_mode = "rgb" if self.policy in IMAGE_POLICIES else "state"
        require_choice("obs_mode", self.obs_mode, ("state", "rgb", "both"))
        require(self.policy not in IMAGE_POLICIES or self.obs_mode != "state", "obs_mode", self.obs_mode,
                f"rgb or both: {self.policy} reads images")
        require(self.policy != "state_token" or self.obs_mode != "rgb", "obs_mode", self.obs_mode,
                "state or both: state_token reads the state")
        require(self.init is None or self.policy == "openvla", "init", self.init,
                "None: only policy=openvla warms up a pretrained checkpoint")
        require(self.policy != "openvla" or self.init is not None or self.policy_preset == "tiny", "init", self.init,
                "a checkpoint (e.g. openvla/openvla-7b or a local folder) for policy=openvla, or policy_preset=tiny "
                "for a toy-sized random OpenVLA")
        if self.image_size is not None:
            require(16 <= self.image_size <= 512, "image_size", self.image_size, "16..512 or None")
        if self.policy == "small_vlm":
            require(self.side % 16 == 0, "image_size", self.image_size, "a multiple of 16 for small_vlm")
        if self.policy == "openvla":
            native = self.openvla_side()
            require(self.image_size in (None, native), "image_size", self.image_size,
                    f"None or {native}, the OpenVLA checkpoint's input size")
        if self.camera_size is not None:
            require(16 <= self.camera_size <= 1920, "camera_size", self.camera_size, "16..1920 or None")
        require(self.epochs > 0, "epochs", self.epochs, "> 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0, "lr", self.lr, "> 0")
        if self.label_sigma is None:
            self.label_sigma = default_label_sigma(self.policy)
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins")
        require(bool(self.hidden) and all(int(h) >= 1 for h in self.hidden), "hidden", self.hidden,
                "a non-empty list of positive widths")
        require(self.lora_rank >= 1, "lora_rank", self.lora_rank, "an integer >= 1")
        require(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        require(self.workers >= 0, "workers", self.workers, "an integer >= 0 (0: one per core)")
        if self.suite is not None:
            from vla_cl.evaluation.suite import load_suite

            load_suite(self.suite)

    def openvla_side(self) -> int:
        """The input side of the OpenVLA to warm up (the checkpoint's; the toy one's without init)."""
        from vla_cl.policies.openvla import OpenVLAPolicy
        from vla_cl.updaters.command import describe_init

        if self.init is None:
            return int(OpenVLAPolicy.fresh_observations("tiny")[1])
        return int(describe_init("init", self.init)[2])

    @property
    def side(self) -> int:
        """The image side demonstrations are recorded at (the policy's input)."""
        if self.image_size is not None:
            return self.image_size
        return self.openvla_side() if self.policy == "openvla" else SMALL_VLM_IMAGE

    def demos_of(self, task: str) -> int:
        return self.task_demos.get(task, self.demos)

    def env_options(self) -> dict[str, Any]:
        """The options of every env the policy acts in, beyond observation mode and image size."""
        return {"camera_size": self.camera_size}

    def recording(self) -> dict[str, Any]:
        """How demonstrations are recorded for this policy (``expert_demos``' options)."""
        return {"obs_mode": self.obs_mode, "image_size": self.side, **self.env_options()}


# ------------------------------------------------------------------------------------------ labels


def default_label_sigma(policy: str) -> float:
    """Soft labels for factorised heads, hard ones for autoregressive policies (see the module docstring)."""
    from vla_cl.policies import get_policy_class

    return 0.0 if get_policy_class(policy).autoregressive else 2.0


# ------------------------------------------------------------------------------------------ pi0


def build_policy(config: PretrainConfig, demos, instructions: list[str]):
    """The policy to behaviour-clone, ready to train: built fresh for the merged demonstrations (their state size
    and action statistics, the tasks' instructions as vocabulary), or the OpenVLA checkpoint ``init`` read with
    the tasks' action statistics; adapters attached for policies trained through them."""
    import torch

    from vla_cl.policies import get_policy_class, make_policy
    from vla_cl.tokenizer import ActionTokenizer, NormStats
    from vla_cl.updaters.loop import derived_seed

    stats = demos.meta["action_stats"]
    torch.manual_seed(derived_seed(config.seed, 100))
    state_dim = demos.meta["state_dim"] if config.obs_mode != "rgb" else 0
    if config.init is not None:
        policy = load_init(config)
    elif config.policy == "openvla":
        policy = get_policy_class("openvla").for_task(state_dim=0, action_stats=stats, instructions=instructions,
                                                      preset="tiny", value_head=False, seed=derived_seed(config.seed, 100))
    else:
        tokenizer = ActionTokenizer(256, 256, NormStats(stats["q01"], stats["q99"], stats["mask"]))
        options = ({"hidden": [int(h) for h in config.hidden]} if config.policy == "state_token"
                   else {"image_size": config.side})
        base = dict(get_policy_class(config.policy).tiny_config()) if config.policy_preset == "tiny" else {}
        base.pop("value_head", None)
        policy = make_policy(config.policy, **{**base, "tokenizer": tokenizer, "instructions": instructions,
                                               "state_dim": state_dim, **options})
    with torch.random.fork_rng():  # adapters start from the run's seed; the global stream goes on as before
        torch.manual_seed(derived_seed(config.seed, 100, 1))
        policy.prepare_finetuning(lora_rank=config.lora_rank)
    return policy


def load_init(config: PretrainConfig):
    """The checkpoint ``init`` (OpenVLA-7B on a GPU: bf16 straight onto it) with the first task's action
    statistics (every task's must match: ``merge_demos`` checked their bounds)."""
    from vla_cl.envs import get_spec
    from vla_cl.policies import get_policy_class, load_policy
    from vla_cl.updaters.command import resolve_init

    cls = get_policy_class(config.policy)
    folder = resolve_init("init", config.init)
    return load_policy(folder, **cls.load_options(get_spec(config.tasks[0]), config.device, folder))


def pretrain(config: PretrainConfig, run_dir: RunDir) -> Path:
    """Demonstrations -> merged -> behaviour cloning; returns the policy's folder (see the module docstring)."""
    from vla_cl.envs import get_spec
    from vla_cl.envs.demos import merge_demos
    from vla_cl.updaters.base import OptimizerConfig
    from vla_cl.updaters.loop import LoopConfig, check_device, train
    from vla_cl.updaters.supervised import SFT, SFTConfig

    check_device(config.device)
    workers = resolve_workers(config.workers)
    sets = []
    for n in sorted({config.demos_of(t) for t in config.tasks}):
        tasks = [t for t in config.tasks if config.demos_of(t) == n]
        sets += zip(tasks, expert_demos(tasks, n, config.seed, run_dir.artifacts / "demos", workers=workers,
                                        log=run_dir.log, **config.recording()))
    by_task = dict(sets)
    merged = merge_demos([by_task[t] for t in config.tasks])
    policy = build_policy(config, merged, [get_spec(t).instruction for t in config.tasks])
    iterations = max(1, math.ceil(config.epochs * len(merged) / config.batch_size))
    updater = SFT(SFTConfig(optim=OptimizerConfig(lr=config.lr, schedule="cosine", minibatches=1),
                            batch_size=config.batch_size, label_sigma=config.label_sigma))
    loop = LoopConfig(iterations=iterations, checkpoint_every=max(1, iterations // 4), refresh_every=0,  # no envs
                      progress=config.progress, tensorboard=False, device=config.device)
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    print(f"[pretrain] {policy.name} ({sum(p.numel() for p in policy.parameters()):,} parameters, {trainable:,} "
          f"trained) on {len(merged)} steps of {merged.num_episodes} demonstrations of {len(config.tasks)} tasks: "
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

    options = config.env_options()
    if config.suite is not None:
        return load_suite(config.suite).with_task_options(options)
    return SuiteConfig(name="pretraining tasks", tasks=[{"task": t, "options": options} for t in config.tasks],
                       episodes=config.eval_episodes)


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
