"""What a razor run will cost, from its config alone: the work of each stage (env steps, training samples) and
an estimate of its hours from per-unit costs, printed when a run starts and kept in ``plan.json``.

Work is counted exactly where the config fixes it (demonstrations kept, SFT samples, episodes) and bounded above
where episodes end early on success (an episode is counted at its full ``max_episode_steps``; demonstrations at
``EXPERT_STEPS``, the experts' measured mean length).

Costs (``UnitCosts``): seconds per env step of the CPU simulator, and seconds per unit of policy work. Defaults:

* ``env_step``: measured here (``benchmarks/envs.py``): a Bridge scene at 640x480 on one CPU core, 0.034 s
  (29 steps/s); at the 160 px camera 0.011 s; a Panda task 0.004 s.
* CPU-scale policies: measured here (``CPU_POLICY_COSTS``; the tiny OpenVLA's are rough).
* OpenVLA-7B on a GPU, not measured here (no GPU was lent to this project's machines): RL4VLA report ~42 h on
  one A100 for their 2M-env-step PPO run with 64 envs, i.e. 0.0756 s per env step for rollout and update
  together. A PPO env step costs one forward pass to act plus one forward and backward to learn (~3 forward
  passes' worth, the usual 1:2 ratio), so one forward pass is taken as 1/4 of it (0.019 s per evaluation step)
  and one training sample (SFT, forward and backward) as 3/4 (0.057 s). These ratios are assumptions; a
  measured ``benchmarks/openvla_gpu.py`` table replaces them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vla_cl.razor.config import DEMO_METHODS

EXPERT_STEPS = {"simpler": 33, "maniskill": 24}  # mean expert episode length (steps), measured (README)
# (s per acting step, s per training sample) on one core of the 2-core reference machine: state_token from the
# razor's pi0 stage (864k samples in 62 s on 2 cores) and acting in evaluation; small_vlm (64 px) from its
# behaviour cloning (0.45 s per 256 samples) and generate() at batch 4 (2.2 ms per observation).
CPU_POLICY_COSTS = {"state_token": (0.0002, 0.00015), "small_vlm": (0.0022, 0.0018), "openvla": (0.002, 0.002)}
RL4VLA_PPO_STEP = 42 * 3600 / 2_000_000  # s per env step, rollout + update, OpenVLA-7B on one A100


@dataclasses.dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of work (see the module docstring for the defaults' sources)."""

    env_step: float  # one env step of the CPU simulator
    act: float  # one policy forward pass that picks an action (acting, evaluating)
    learn_sample: float  # one training sample, forward and backward
    source: str = ""

    @classmethod
    def for_config(cls, config: Any) -> UnitCosts:
        bridge = any(t.startswith("simpler/") for t in [*config.prior_tasks, config.new_task])
        env = (0.034 if config.camera_size is None else 0.011) if bridge else 0.004
        if config.policy == "openvla" and config.policy_preset != "tiny":
            return cls(env, RL4VLA_PPO_STEP / 4, RL4VLA_PPO_STEP * 3 / 4,
                       "OpenVLA-7B from RL4VLA's published 42 h per 2M PPO env steps on one A100 (not measured here)")
        act, learn = CPU_POLICY_COSTS.get(config.policy, (0.0, 0.0))
        return cls(env, act, learn, f"{config.policy} on one CPU core, measured here")


@dataclasses.dataclass(frozen=True)
class StageWork:
    stage: str
    env_steps: int  # at most
    samples: int  # training samples (forward and backward)
    what: str

    def hours(self, costs: UnitCosts) -> tuple[float, float]:
        """(simulator hours, policy hours): env steps on the CPU; policy forward passes and training on its device.
        Every env step of a policy's episode is also one forward pass; a demonstration's is not."""
        acting = 0 if self.stage == "demos" else self.env_steps
        return self.env_steps * costs.env_step / 3600, (acting * costs.act + self.samples * costs.learn_sample) / 3600


def _steps(task: str, suite: Any) -> int:
    from vla_cl.envs import get_spec

    return suite.max_episode_steps or get_spec(task).max_episode_steps


def snapshot_count(iterations: int) -> int:
    """Mid-training snapshots of a razor trial: every third of its iterations (``snapshot_every``), the last one
    excepted (the final policy)."""
    every = max(1, iterations // 3)
    return (iterations - 1) // every


def plan(config: Any) -> list[StageWork]:
    """The work of each stage (see the module docstring)."""
    suite, experiment = config.retention_suite(), config.experiment_suite()
    expert = lambda task: EXPERT_STEPS[task.split("/")[0]]
    demo_steps = sum(config.demos * expert(t) for t in config.prior_tasks)
    warmup_steps = config.new_task_warmup * expert(config.new_task)
    new_demo_steps = config.new_task_demos * expert(config.new_task)
    cells = lambda s, axes: sum(len(axes) * s.episodes * len(s.seeds) * _steps(t, suite) for t in s.task_ids)
    full = cells(experiment, experiment.axes)
    snapshot = sum(config.snapshot_episodes * _steps(t, suite) for t in experiment.task_ids)
    trials = config.trials()
    sft = [t for t in trials if t.method in DEMO_METHODS]
    rl = [t for t in trials if t.method not in DEMO_METHODS]  # they collect their own episodes
    rollout = config.rl_iterations * config.rl_episodes * _steps(config.new_task, suite)
    rl_steps = (len(rl) + config.seeds) * rollout  # every RL run and one distillation per training seed
    sft_samples = sum(t.iterations * config.sft_batch for t in sft)
    finals = len(trials) + config.seeds
    snapshots = sum(snapshot_count(t.iterations) for t in trials) + config.seeds * snapshot_count(config.rl_iterations)
    probes = (config.probe_episodes + config.old_probe_episodes * len(suite.task_ids)
              + config.onpolicy_probe_episodes * (finals + snapshots)) * _steps(config.new_task, suite)
    return [
        StageWork("demos", demo_steps + warmup_steps + new_demo_steps, 0,
                  f"{config.demos} per prior task, {config.new_task_warmup} warm-up and {config.new_task_demos} "
                  "SFT demonstrations of the new task"),
        StageWork("pi0", 0, int(config.pi0_epochs * (demo_steps + warmup_steps)),
                  f"{config.pi0_epochs:g} epochs of behaviour cloning"),
        StageWork("pi0_eval", full, 0, f"{len(experiment.task_ids)} tasks x {len(experiment.axes)} axes x "
                  f"{experiment.episodes * len(experiment.seeds)} episodes"),
        StageWork("sweep", rl_steps, sft_samples + rl_steps,
                  f"{len(rl)} RL runs and {config.seeds} distillation(s) of {config.rl_iterations} x "
                  f"{config.rl_episodes} episodes, {len(sft)} SFT runs ({config.num_envs} envs per run)"),
        StageWork("evaluation", finals * full + snapshots * snapshot + probes, 0,
                  f"{finals} final policies on every axis, {snapshots} snapshots in-distribution, probes"),
        *([StageWork("greedy", (finals + 1) * cells(suite, ["in_distribution"]), 0,
                     f"pi0 and {finals} final policies on the retention tasks, greedy")] if config.greedy_retention
          else []),
    ]


def summary(config: Any) -> dict[str, Any]:
    """The plan with its hours (``plan.json``) and a table for the log."""
    costs = UnitCosts.for_config(config)
    rows = []
    for work in plan(config):
        sim, policy = work.hours(costs)
        rows.append({**dataclasses.asdict(work), "simulator_hours": round(sim, 2), "policy_hours": round(policy, 2)})
    return {"costs": dataclasses.asdict(costs), "stages": rows,
            "total_simulator_hours": round(sum(r["simulator_hours"] for r in rows), 2),
            "total_policy_hours": round(sum(r["policy_hours"] for r in rows), 2)}


def table(plan_summary: dict[str, Any]) -> str:
    lines = ["| stage | env steps (at most) | training samples | simulator h (1 core) | policy h | what |",
             "|---|---|---|---|---|---|"]
    for r in plan_summary["stages"]:
        lines.append(f"| {r['stage']} | {r['env_steps']:,} | {r['samples']:,} | {r['simulator_hours']:.2f} | "
                     f"{r['policy_hours']:.2f} | {r['what']} |")
    lines.append(f"| total | | | {plan_summary['total_simulator_hours']:.2f} | "
                 f"{plan_summary['total_policy_hours']:.2f} | costs: {plan_summary['costs']['source']} |")
    return "\n".join(lines)
