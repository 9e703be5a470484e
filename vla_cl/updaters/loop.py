"""The one training loop every updater runs on.

    train(policy, updater, env, LoopConfig(iterations=20), run_dir, seed=0, demos=demos)

Each iteration: get data (the policy's own episodes, a teacher's episodes, or a demonstration batch, from
the updater's data source, ``vla_cl.updaters.sources``) -> ``updater.prepare`` -> ``update_epochs``
passes of ``minibatches`` minibatches -> ``updater.loss`` -> backward, with ``grad_accum`` minibatches per AdamW step, the
global gradient norm clipped and the learning rate set from the schedule. Iteration 0 is pi0 before any
update: it is evaluated and gives the KL probe's reference.

Evaluation: success rate over ``eval_episodes`` seeded episodes of the new task, on the same envs with
the same reset and truncation rules as training, the same seeds and sampling randomness every time.
KL probe: a fixed set of new-task states (pi0's own episodes collected at the start, with pi0's tokens
to teacher-force on; saved as ``artifacts/probe.safetensors``) on which E[KL(pi0 || pi)] is measured.

Exact resume. Every iteration is a pure function of (the state after the previous iteration, seed,
iteration index): its episodes start from seeds derived from (seed, iteration), its sampling and
minibatch order use generators seeded the same way, torch's global generator (dropout) is seeded from
(seed, iteration) before each update, and whole episodes are collected. The simulator's own memory of
earlier episodes (ManiSkill's physics keeps some across resets) is cleared by rebuilding the envs' scenes
on a fixed schedule, before their first use after every ``refresh_every``-th iteration (``refresh``),
which puts them where freshly created envs are. Checkpoints fall on that schedule (``checkpoint_every``
is a multiple of ``refresh_every``), so a resumed run's fresh envs are where the uninterrupted run's
refreshed ones are, and how often a run checkpoints does not change its results. A checkpoint after
iteration k (``vla_cl.updaters.checkpoint``) holds the weights, the optimiser state and the counters;
a run started again with the same ``out_dir`` restores it, drops the metrics lines written after it,
and continues: its final metrics (apart from ``WALL_CLOCK`` fields) and weights equal an uninterrupted
run's bit for bit.

Outputs in the run directory: ``metrics.jsonl`` (one line per iteration), TensorBoard scalars in
``artifacts/tb``, checkpoints in ``artifacts/checkpoints``, the final policy in ``artifacts/policy``,
mid-training policies in ``artifacts/snapshots/iter-NNNNNN`` (``snapshot_every``) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from vla_cl.config import option, require, require_choice
from vla_cl.errors import TrainingDiverged
from vla_cl.policies.base import ObsBatch, Policy
from vla_cl.runs import RunDir
from vla_cl.updaters import checkpoint as ckpt
from vla_cl.updaters.base import Updater
from vla_cl.updaters.budget import KL_CONTROLS, KLBudget, Undo
from vla_cl.updaters.data import REWARDS, Batch, PolicyActor, Rollouts, collect_rollouts
from vla_cl.updaters.optim import make_optimizer, set_lr
from vla_cl.updaters.seeds import (
    DROPOUT,
    EVAL,
    EVAL_SAMPLE,
    MINIBATCH,
    PROBE,
    PROBE_SAMPLE,
    REFRESH,
    derived_seed,
    generator,
)
from vla_cl.updaters.sources import Source

WALL_CLOCK = ("time", "seconds", "samples_per_s", "sync/seconds")  # metrics that differ between identical runs
PROBE_FILE = "probe.safetensors"


@dataclasses.dataclass
class LoopConfig:
    """What the loop does around the updates (the updater's config holds the optimisation settings)."""

    iterations: int = option(10, "training iterations (each: collect data, then update)")
    reward: str = option("success", "rollout reward: success (1 on the step the task succeeds) or env (dense)")
    eval_every: int = option(5, "evaluate every this many iterations (0 = only before and after training)")
    eval_episodes: int = option(10, "seeded episodes per evaluation")
    eval_greedy: bool = option(False, "evaluate with argmax actions instead of sampling")
    probe_every: int = option(1, "measure the KL probe every this many iterations (0 = only at the end)")
    probe_episodes: int = option(4, "pi0 episodes whose states form the KL probe set")
    probe_states: int = option(256, "at most this many probe states (evenly spaced over those episodes)")
    kl_budget: float | None = option(None, "keep the KL probe's E[KL(pi0 || pi)] at or under this many nats per "
                                     "action (None = no budget; measured after every update, see "
                                     "vla_cl.updaters.budget)")
    kl_control: str = option("adaptive", "how kl_budget is kept: adaptive (PPO's adaptive KL coefficient, "
                             "over-budget updates undone) or stop (the run ends before its first update over budget)")
    checkpoint_every: int = option(5, "save a resumable checkpoint every this many iterations (and at the end); "
                                   "a multiple of refresh_every")
    keep_checkpoints: int = option(2, "checkpoints kept (the newest; a resume falls back to an older one when "
                                   "the newest is unreadable)")
    snapshot_every: int = option(0, "also keep the policy alone every this many iterations, in "
                                 "artifacts/snapshots/iter-NNNNNN (0 = none): mid-training policies to evaluate")
    refresh_every: int = option(5, "rebuild the envs' scenes every this many iterations, clearing the physics' "
                                "memory of earlier episodes (0 = never: resumes are then not exact on ManiSkill)")
    device: str = option("cpu", "torch device for the policy: cpu, cuda, cuda:1, ...", affects_results=False)
    progress: bool = option(True, "show a progress bar", affects_results=False)
    tensorboard: bool = option(True, "also write TensorBoard scalars to artifacts/tb", affects_results=False)

    def __post_init__(self) -> None:
        require(self.iterations >= 1, "iterations", self.iterations, "an integer >= 1")
        require_choice("reward", self.reward, REWARDS)
        if self.kl_budget is not None:
            budget = self.kl_budget
            require(isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
                    and budget > 0, "kl_budget", budget, "a finite number of nats per action > 0 (None = no budget)")
        require_choice("kl_control", self.kl_control, KL_CONTROLS)
        for name in ("eval_every", "probe_every", "checkpoint_every", "snapshot_every", "refresh_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0 (0 = only at the end)")
        for name in ("eval_episodes", "probe_episodes", "probe_states", "keep_checkpoints"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        if self.refresh_every and self.checkpoint_every:
            require(self.checkpoint_every % self.refresh_every == 0, "checkpoint_every", self.checkpoint_every,
                    f"a multiple of refresh_every={self.refresh_every} (a resumed run starts from freshly built "
                    "scenes, which the uninterrupted run has only right after a refresh), or set refresh_every to "
                    "a divisor of it")
        try:
            torch.device(self.device)
        except RuntimeError:
            require(False, "device", self.device, "a torch device string such as cpu or cuda:0")


def check_device(device: str) -> None:
    """Raise ValueError unless this machine has ``device``. Commands call it when they start, not
    ``LoopConfig``: a config written for a GPU machine still composes (and shows in ``--help``) on any
    other."""
    wanted = torch.device(device)
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device}: this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False); pass device=cpu, or run on a machine with "
                             "a GPU and a CUDA build of torch")
        count = torch.cuda.device_count()
        if wanted.index is not None and wanted.index >= count:
            raise ValueError(f"device={device}: this machine has {count} CUDA device{'s' * (count != 1)} "
                             f"(cuda:0..cuda:{count - 1}); pass device=cuda:0 or another index below "
                             f"{count}")
    elif wanted.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device}: this machine has no MPS device "
                         "(torch.backends.mps.is_available() is False); pass device=cpu")


def due(iteration: int, every: int, last: int) -> bool:
    return iteration == last or (every > 0 and iteration % every == 0)


# ------------------------------------------------------------------------------------------ the loop


def train(
    policy: Policy,
    updater: Updater,
    env: Any,
    config: LoopConfig,
    run_dir: RunDir,
    *,
    seed: int,
    demos: Any = None,
    teacher: Policy | None = None,
    inference: Any = None,
    learner: Any = None,
) -> dict[str, Any]:
    """Fine-tune ``policy`` (pi0 as given) with ``updater`` on ``env``; see the module docstring.
    Resumes from the run directory's checkpoint when there is one. Returns the summary. ``inference`` (an
    ``InferenceWorker``) acts for the policy in the updater's own episodes, synced before each collection.
    ``learner`` (a ``vla_cl.updaters.distributed.Learner``) makes the updates data-parallel over the launched
    processes; only its first process writes the run directory."""
    from vla_cl.updaters.distributed import Learner

    learner = learner or Learner()
    device = torch.device(config.device)
    policy.to(device)
    if teacher is not None:
        teacher.to(device)
    try:
        source = updater.data_source(policy, demos=demos, teacher=teacher, reward=config.reward, seed=seed,
                                     device=device)
    except ValueError as error:
        raise ValueError(f"updater {updater.name!r}: {error}") from None
    check_setup(policy, updater, source, device)
    learner.remote_inference = inference is not None
    if learner.shards_episodes:
        if not hasattr(source, "share"):
            raise ValueError(f"invalid value for learner.shard_episodes: True, but updater {updater.name!r} learns "
                             f"from {source.name}, which is not collected; set it to false")
        states = getattr(source, "episodes", 0) // getattr(source, "repeats", 1)
        if states < learner.world:
            raise ValueError(f"invalid value for learner.shard_episodes: True, but an iteration's {states} initial "
                             f"states cannot be shared by {learner.world} processes; collect more episodes "
                             "(updater.episodes) or set it to false")
        source.share = learner
    if inference is not None:
        if not source.remote_inference:
            raise ValueError(f"rollout.inference=worker: updater {updater.name!r} learns from {source.name}, "
                             "which an inference worker does not act; use rollout.inference=learner")
        source.inference = inference
    if env is None and source.needs_env:
        raise ValueError(f"updater {updater.name!r} collects episodes: pass the task's env")
    policy.mark_reference()
    learner.prepare(policy)
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    total_steps = config.iterations * updater.config.optim.steps_per_iteration
    # Without an env (training on demonstrations alone, e.g. pretraining pi0) there is no evaluation and
    # no KL probe: the caller evaluates the result on a suite.
    probe = kl_probe(policy, env, config, run_dir, seed, device, write=learner.main,
                     learner=learner) if env is not None else None
    measure = {"learner": learner}
    if config.kl_budget is not None and probe is None:
        raise ValueError(f"invalid value for kl_budget: {config.kl_budget:g}, but updater {updater.name!r} trains "
                         "without the task's env, which the KL probe's states come from; pass the task or set "
                         "kl_budget=null")
    budget = None if config.kl_budget is None else KLBudget(config.kl_budget, config.kl_control, updater.kl_coef)
    undo = Undo(policy.trainable_parameters(), optimizer) if budget is not None else None

    checkpoints = run_dir.path / "artifacts" / "checkpoints"
    if learner.sharded and ckpt.latest_checkpoint(checkpoints) is not None:
        raise ValueError(f"{run_dir.path} holds a checkpoint, and resuming under learner.strategy=fsdp is not "
                         "supported yet: its checkpoints hold whole tensors, so run the same command with "
                         "learner.strategy=ddp or single to continue it")
    resumed = ckpt.load_checkpoint(checkpoints, policy, optimizer)
    start = 0 if resumed is None else resumed["iteration"]
    counters = {"step": 0, "samples": 0, "episodes": 0, "env_steps": 0}
    if resumed is not None:
        if resumed["seed"] != seed or resumed["updater"] != updater.name:
            raise ValueError(f"{run_dir.path} holds a checkpoint of another run (seed {resumed['seed']}, "
                             f"updater {resumed['updater']!r}); choose another out_dir")
        counters = {name: resumed[name] for name in counters}
        if budget is not None:
            if "kl_coef" not in resumed:
                raise ValueError(f"{run_dir.path} holds a checkpoint of a run without kl_budget; resume it without "
                                 "kl_budget, or choose another out_dir")
            budget.coef, budget.stopped = resumed["kl_coef"], resumed.get("kl_stopped", False)
            budget.lr_scale = resumed.get("kl_lr_scale", 1.0)
    if learner.main:
        ckpt.truncate_metrics(run_dir.metrics_path, start if resumed is not None else -1)
    writer = tensorboard_writer(run_dir, start, config.tensorboard and learner.main)
    log = Logger(run_dir, writer) if learner.main else (lambda **_: None)

    if start == 0:
        log(iteration=0, **counters, **evaluate(policy, env, config, seed, device, **measure),
            **probe_metrics(probe, policy, **measure))

    from tqdm.auto import tqdm

    bar = tqdm(range(start + 1, config.iterations + 1), initial=start, total=config.iterations,
               desc=f"{updater.name}", disable=not config.progress, dynamic_ncols=True)
    refresh_due = False  # the envs remember episodes from before the last refresh point; fresh envs do not
    for iteration in bar:
        if budget is not None and budget.stopped:
            break
        started = time.perf_counter()
        evaluating = env is not None and due(iteration, config.eval_every, config.iterations)
        if refresh_due and env is not None and (source.needs_env or evaluating):
            refresh(env, seed)
            refresh_due = False
        data, data_metrics = source.collect(env, iteration)
        batch = updater.prepare(policy, data)
        rng = np.random.default_rng(derived_seed(seed, MINIBATCH, iteration))
        torch.manual_seed(derived_seed(seed, DROPOUT, iteration))  # dropout draws from the global generator
        if budget is not None:
            updater.kl_coef = budget.coef
            undo.save()
        try:
            losses, counters["step"] = optimise(policy, updater, batch, optimizer, counters["step"], total_steps,
                                                rng, device, learner, 1.0 if budget is None else budget.lr_scale)
        except NonFinite as problem:
            raise TrainingDiverged(diverged_message(problem, iteration, updater, run_dir)) from None
        rows = learner.total_rows(len(batch))
        counters["samples"] += rows * updater.config.optim.update_epochs
        if learner.shards_episodes:  # counts summed, rates averaged over every process's episodes
            data_metrics = learner.sum(data_metrics)
            data_metrics.update({k: v / learner.world for k, v in data_metrics.items() if k.startswith("rollout/")
                                 and k != "rollout/env_workers_replaced"})
        counters["episodes"] += int(data_metrics.pop("episodes", 0))
        counters["env_steps"] += int(data_metrics.pop("env_steps", 0))
        record = {"iteration": iteration, **counters, **losses, **data_metrics,
                  "batch_rows": rows}
        last = config.iterations
        if budget is not None:  # the probe decides whether the update stands before anything measures it
            kl = probe_metrics(probe, policy, **measure)
            record.update(budget.judge(kl["kl/mean"]))
            if record["kl/rejected"]:
                undo.restore()
                kl = probe_metrics(probe, policy, **measure)
            if budget.stopped:
                last, evaluating = iteration, env is not None
        if evaluating:
            record.update(evaluate(policy, env, config, seed, device, **measure))
        if budget is not None:
            record.update(kl)
        elif due(iteration, config.probe_every, last):
            record.update(probe_metrics(probe, policy, **measure))
        seconds = time.perf_counter() - started
        record.update(seconds=round(seconds, 4), samples_per_s=round(rows * updater.config.optim.update_epochs
                                                                     / max(seconds, 1e-9), 2))
        log(**record)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("train/loss", "eval/success_rate", "kl/mean") if k in record})
        if config.snapshot_every and iteration < last and iteration % config.snapshot_every == 0:
            with learner.gathered(write=True) as writing:
                if writing:
                    policy.save_pretrained(run_dir.artifacts / "snapshots" / f"iter-{iteration:06d}",
                                           metadata={"updater": updater.name, "iteration": iteration, **counters})
        if due(iteration, config.checkpoint_every, last):
            control = {} if budget is None else {"kl_coef": budget.coef, "kl_stopped": budget.stopped,
                                                 "kl_lr_scale": budget.lr_scale}
            with learner.gathered(write=True) as writing:
                ckpt.save_checkpoint(run_dir.path / "artifacts" / "checkpoints", iteration, policy, optimizer,
                                     {"seed": seed, "updater": updater.name, **counters, **control},
                                     keep=config.keep_checkpoints, write=writing)
        if config.refresh_every and iteration % config.refresh_every == 0:
            refresh_due = True
    bar.close()
    if writer is not None:
        writer.close()
    with learner.gathered(write=True) as writing:
        if writing:
            policy.save_pretrained(run_dir.artifacts / "policy", metadata={"updater": updater.name, **counters})
    learner.barrier()  # the others read what the first process wrote
    metrics = run_dir.read_metrics()
    summary = {"updater": updater.name, "iterations": config.iterations, "resumed_from": start, **counters,
               "first": _without_wall_clock(metrics[0]), "final": _without_wall_clock(metrics[-1])}
    if budget is not None:
        summary["kl_budget"] = {"budget": budget.budget, "control": budget.control, "final_coef": budget.coef,
                                "final_lr_scale": budget.lr_scale,
                                "stopped_at": metrics[-1]["iteration"] if budget.stopped else None,
                                "rejected": sum(int(m.get("kl/rejected", 0)) for m in metrics),
                                "max_kl": max(m["kl/mean"] for m in metrics if "kl/mean" in m)}
    if learner.main:
        run_dir.write_json("summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------ the pieces


class NonFinite(ArithmeticError):
    """A loss, gradient or weight is NaN or infinite (raised by ``optimise``; ``train`` names the iteration)."""


def diverged_message(problem: NonFinite, iteration: int, updater: Updater, run_dir: RunDir) -> str:
    c = updater.config
    return (f"training diverged in iteration {iteration}: {problem}. Nothing of this iteration was saved; the last "
            f"good checkpoint in {run_dir.path / 'artifacts' / 'checkpoints'} is what a resume uses. Likely cause: "
            f"the learning rate (updater.optim.lr={c.optim.lr:g}) or the clipping (updater.optim.grad_clip="
            f"{c.optim.grad_clip:g}) or the KL weight (updater.kl_coef={c.kl_coef:g}); lower the learning rate and "
            "run again in a new out_dir")


def refresh(env: Any, seed: int) -> None:
    """Rebuild each env's simulated scene (ManiSkill: a reset with ``reconfigure=True``; tasks without
    scenes ignore the option). PhysX keeps solver and contact state across ordinary resets: measured on
    PickCube, the same seeds and actions gave different cube contacts after a different history of
    episodes, so a resumed run (fresh envs) drifted from the uninterrupted one. After a rebuild the envs
    behave as freshly created ones. Cost: ~0.35 s per PickCube env, once per ``refresh_every`` iterations."""
    import gymnasium as gym

    options = {"reconfigure": True}
    if isinstance(env, gym.vector.VectorEnv):
        env.call("reset", seed=derived_seed(seed, REFRESH), options=options)
    else:
        env.reset(seed=derived_seed(seed, REFRESH), options=options)


def check_setup(policy: Policy, updater: Updater, source: Source, device: torch.device) -> None:
    """Refuse, before any work, a combination the updater cannot train."""
    if updater.needs_value_head and not policy.has_value_head:
        raise ValueError(f"updater {updater.name!r} needs a policy with a value head (value_head=True)")
    try:
        source.check(policy, device)
    except ValueError as error:
        raise ValueError(f"updater {updater.name!r}: {error}") from None


def optimise(policy: Policy, updater: Updater, batch: Batch, optimizer: torch.optim.Optimizer, step: int,
             total_steps: int, rng: np.random.Generator, device: torch.device,
             learner: Any = None, lr_scale: float = 1.0) -> tuple[dict[str, float], int]:
    """``update_epochs`` passes over ``batch`` in ``minibatches`` random minibatches, one AdamW step per
    ``grad_accum`` minibatches. Returns the mean of every loss term over the minibatches, the mean
    gradient norm (before clipping) and the learning rate, and the new step count. A batch without rows
    (no successful episode for ``rft``) makes no update but the schedule's clock still advances. With a
    distributed ``learner`` each process computes its share of every minibatch and the gradients are summed
    (``vla_cl.updaters.distributed``)."""
    from vla_cl.updaters.distributed import Learner

    learner = learner or Learner()
    learner.resharded()
    c = updater.config.optim
    params = policy.trainable_parameters()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    lr = None
    optimizer.zero_grad(set_to_none=True)
    sizes = learner.batch_sizes(len(batch))  # with shard_episodes each process's batch is its own
    for epoch in range(c.update_epochs):
        order = rng.permutation(len(batch))
        for k, rows in enumerate(np.array_split(order, c.minibatches)):
            counts_k = [len(np.array_split(np.arange(n), c.minibatches)[k]) for n in sizes]  # every process's rows
            if len(rows) or any(counts_k):
                mine, weight = learner.shard(rows, counts_k)
                if not all(counts_k) or not len(mine):
                    raise ValueError(f"minibatch {k + 1} leaves a learner process without rows (rows per process: "
                                     f"{counts_k if learner.shards_episodes else len(rows)}); collect more "
                                     "episodes, lower updater.optim.minibatches, or set learner.shard_episodes=false")
                terms = updater.loss(policy, batch.select(mine).to(device))
                values = learner.reduce_terms({k: float(v.detach()) for k, v in terms.items()}, weight)
                if not np.isfinite(values["loss"]):
                    raise NonFinite(f"the loss is {values['loss']} (terms: {values})")
                (terms["loss"] * weight / c.grad_accum).backward()
                for name, value in values.items():
                    sums[name] += value
                    counts[name] += 1
            if (epoch * c.minibatches + k + 1) % c.grad_accum:
                continue
            lr = set_lr(optimizer, c, step, total_steps, lr_scale)
            learner.reduce_gradients(params)
            if any(p.grad is not None for p in params):
                norm = learner.clip(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
                if not bool(torch.isfinite(norm)):
                    raise NonFinite(f"the gradient norm is {float(norm)}")
                sums["grad_norm"] += float(norm)
                counts["grad_norm"] += 1
                optimizer.step()
                bad = [name for name, p in policy.named_parameters() if p.requires_grad
                       and not bool(torch.isfinite(p).all())]
                if bad:
                    raise NonFinite(f"the weights became non-finite after the optimiser step ({bad[:3]})")
            optimizer.zero_grad(set_to_none=True)
            step += 1
    out = {name if name == "grad_norm" else f"train/{name}": sums[name] / counts[name] for name in sums}
    out["lr"] = lr
    return out, step


def evaluate(policy: Policy, env: Any, config: LoopConfig, seed: int, device: torch.device,
             learner: Any = None) -> dict[str, float]:
    """Success rate, return and length over the same ``eval_episodes`` seeded episodes every time (nothing
    without an env). A ``learner`` that shards measurements has each process run its share of the episodes
    (the same seeds; sampled actions from each process's own stream) and gathers them."""
    from vla_cl.envs.vector import rollout, summarize

    if env is None:
        return {}
    share, sampling = range(config.eval_episodes), generator(seed, EVAL_SAMPLE)
    if learner is not None and learner.shards_measurements:
        share = learner.share(config.eval_episodes, force=True)
        sampling = torch.Generator().manual_seed(derived_seed(seed, EVAL_SAMPLE) + 7919 * learner.rank)
    episodes = []
    if len(share):
        actor = PolicyActor(policy, sampling, config.eval_greedy, device)
        episodes = rollout(actor, env, len(share), seed=derived_seed(seed, EVAL) + share.start)
    if learner is not None and learner.shards_measurements:
        episodes = learner.gather(episodes)
    summary = summarize(episodes)
    metrics = {"eval/success_rate": summary["success_rate"], "eval/length": summary["mean_length"]}
    if config.reward == "env":  # with the success reward the return is the success rate
        metrics["eval/return"] = summary["mean_return"]
    return metrics


# ------------------------------------------------------------------------------------------ KL probe


def kl_probe(policy: Policy, env: Any, config: LoopConfig, run_dir: RunDir, seed: int, device: torch.device,
             write: bool = True, learner: Any = None):
    """The KL probe on a fixed set of new-task states: read from the run directory, or collected now with
    the policy (pi0: call before any update) and saved (``write``). pi0's distributions on it are cached.
    A ``learner`` that shards measurements keeps this process's contiguous share of the states."""
    from vla_cl.kl import KLProbe

    path = run_dir.path / "artifacts" / PROBE_FILE
    if path.exists():
        obs, tokens = load_probe_set(path)
    else:
        rollouts = collect_rollouts(policy, env, config.probe_episodes, derived_seed(seed, PROBE),
                                    generator(seed, PROBE_SAMPLE), reward=config.reward, device=device)
        obs, tokens = probe_subset(rollouts, config.probe_states)
        if write:
            save_probe_set(run_dir.artifacts / PROBE_FILE, obs, tokens)
    if learner is not None and learner.shards_measurements:
        rows = torch.as_tensor(list(learner.share(len(obs), force=True)), dtype=torch.long)
        if not len(rows):
            raise ValueError(f"the KL probe's {len(obs)} states cannot be shared by {learner.world} processes; "
                             "raise probe_states or probe_episodes")
        obs, tokens = obs.select(rows), tokens[rows]
    probe = KLProbe({"obs": obs, "tokens": tokens}, batch_size=64, support=policy.action_support)
    with policy.reference():
        probe.cache_reference(probe_logits_fn(policy, device))
    return probe


def probe_logits_fn(policy: Policy, device: torch.device):
    return lambda batch: policy.action_logits(batch["obs"].to(device), batch["tokens"].to(device))


def probe_metrics(probe: Any, policy: Policy, learner: Any = None) -> dict[str, float]:
    """E[KL(pi0 || pi)] on the probe set with its standard error (over every process's states when sharded)."""
    from vla_cl.kl import KLEstimate

    if probe is None:
        return {}
    estimate = probe.measure(probe_logits_fn(policy, next(policy.parameters()).device))
    if learner is not None and learner.shards_measurements:
        estimate = KLEstimate.from_samples(torch.cat(learner.gather([estimate.per_sample])))
    return {"kl/mean": estimate.mean, "kl/std_error": estimate.std_error}


def probe_subset(rollouts: Rollouts, max_states: int) -> tuple[ObsBatch, torch.Tensor]:
    """At most ``max_states`` rows, evenly spaced over the episodes' steps."""
    rows = torch.from_numpy(np.unique(np.linspace(0, len(rollouts) - 1, min(max_states, len(rollouts))).round()
                                      .astype(np.int64)))
    return rollouts.obs.select(rows), rollouts.tokens[rows]


def save_probe_set(path, obs: ObsBatch, tokens: torch.Tensor) -> None:
    import json

    from safetensors.torch import save_file

    tensors = {"tokens": tokens.contiguous()}
    if obs.state is not None:
        tensors["state"] = obs.state.contiguous()
    if obs.image is not None:
        tensors["image"] = obs.image.contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"instructions": json.dumps(obs.instruction)})
    tmp.replace(path)


def load_probe_set(path) -> tuple[ObsBatch, torch.Tensor]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        instructions = json.loads(handle.metadata()["instructions"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return ObsBatch(instructions, tensors.get("state"), tensors.get("image")), tensors["tokens"]


# ------------------------------------------------------------------------------------------ logging


def _without_wall_clock(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in WALL_CLOCK}


def tensorboard_writer(run_dir: RunDir, start: int, enabled: bool):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step hides events a killed run wrote after its last checkpoint.
    return SummaryWriter(log_dir=str(run_dir.artifacts / "tb"), purge_step=start + 1 if start else None)


class Logger:
    """One metrics line per iteration in metrics.jsonl, the same scalars in TensorBoard."""

    def __init__(self, run_dir: RunDir, writer: Any):
        self.run_dir, self.writer = run_dir, writer

    def __call__(self, **record: Any) -> None:
        self.run_dir.log(**record)
        if self.writer is None:
            return
        for name, value in record.items():
            if name != "iteration" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(name, value, record["iteration"])
        self.writer.flush()
