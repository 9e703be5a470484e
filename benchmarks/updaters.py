"""Benchmark every updater's learning step on the CPU-scale policies: training samples per second.

    python benchmarks/updaters.py            # default-size policies, best of 3 repeats
    python benchmarks/updaters.py --quick    # tiny policies, seconds; a smoke test runs this
    python benchmarks/updaters.py --sim      # also: episode collection on ManiSkill3 PickCube

Table 1 times what the training loop does with one iteration's data, for each updater and policy:
``updater.prepare`` (advantages, old log-probs, values, oracle targets; no gradients) plus
``loop.optimise`` (the updater's default ``update_epochs`` x ``minibatches``, forward, backward, AdamW).
The data are synthetic but shaped like the razor experiment's (16-dim state, 64x64 images, 7 action
tokens of 256 bins; rollouts of 8 episodes x 32 steps, some succeeding): ``samples/s`` counts training
rows processed (rows x update_epochs) per second, so PPO's 4 epochs count four times.

Table 2 (``--sim``) times the other half of an on-policy iteration, collecting episodes: state_token
acting on PickCube-v1 (state observations) through ``collect_rollouts`` with 4 in-process envs.

Timings are the best of ``--repeats`` runs in this process's CPU time (``--clock wall`` for wall-clock).
Run with OMP_NUM_THREADS=1 for figures comparable across machines.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vla_cl.benchmarking import CLOCKS, print_table
from vla_cl.policies import ObsBatch, get_policy_class, make_policy
from vla_cl.tokenizer import ActionTokenizer
from vla_cl.updaters.data import Batch, Rollouts
from vla_cl.updaters.loop import optimise
from vla_cl.updaters.optim import make_optimizer
from vla_cl.updaters.registry import list_updaters, make_updater

INSTRUCTION = "lift the red cube slightly and hold it at the green target"
STATE_DIM, IMAGE_SIZE, EPISODES, LENGTH = 16, 64, 8, 32


def policies(quick: bool) -> list[tuple[str, torch.nn.Module]]:
    tokenizer = ActionTokenizer(256, 256)
    make = lambda name, **config: make_policy(name, tokenizer=tokenizer, instructions=[INSTRUCTION],
                                              value_head=True, **config)
    if quick:
        tiny = lambda name: {k: v for k, v in get_policy_class(name).tiny_config().items()
                             if k not in ("instructions", "value_head", "state_dim", "max_words")}
        return [("state_token (tiny)", make("state_token", state_dim=STATE_DIM, **tiny("state_token"))),
                ("small_vlm (tiny)", make("small_vlm", state_dim=STATE_DIM, max_words=16, **tiny("small_vlm")))]
    return [("state_token", make("state_token", state_dim=STATE_DIM)),
            ("small_vlm (image + state)", make("small_vlm", state_dim=STATE_DIM))]


def observations(n: int, g: torch.Generator) -> ObsBatch:
    return ObsBatch([INSTRUCTION] * n, torch.randn(n, STATE_DIM, generator=g),
                    torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8))


def synthetic_rollouts(episodes: int, length: int, g: torch.Generator) -> Rollouts:
    """``episodes`` episodes of ``length`` steps; every other one succeeds on its last step."""
    n = episodes * length
    success = torch.arange(episodes) % 2 == 0
    last = torch.zeros(n, dtype=torch.bool)
    last[length - 1 :: length] = True
    episode = torch.arange(episodes).repeat_interleave(length)
    terminated = last & success[episode]
    probs = torch.softmax(torch.randn(n, 7, 256, generator=g), -1)
    return Rollouts(obs=observations(n, g), tokens=torch.randint(0, 256, (n, 7), generator=g),
                    reward=terminated.float(), terminated=terminated, truncated=last & ~terminated, episode=episode,
                    final_obs=observations(episodes, g), success=success, returns=success.float(),
                    seeds=torch.arange(episodes), probs=probs)


def measure(name: str, policy, data, repeats: int, clock) -> tuple[float, float]:
    """(samples/s, optimiser steps/s) of prepare + optimise on ``data``."""
    options = {"group_size": 2} if name == "grpo" else {}
    updater = make_updater(name, **options)
    policy.mark_reference()
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    steps = updater.config.optim.steps_per_iteration
    times, rows = [], 0
    for r in range(repeats + 1):  # the first run warms up (allocations)
        start = clock()
        batch = updater.prepare(policy, data)
        optimise(policy, updater, batch, optimizer, 0, steps, np.random.default_rng(r), torch.device("cpu"))
        if r:
            times.append(clock() - start)
        rows = len(batch) * updater.config.optim.update_epochs
    best = min(times)
    return rows / best, steps / best


def collection_rate(episodes: int, clock) -> float:
    """Env steps/s of state_token collecting PickCube-v1 episodes on 4 in-process envs."""
    from vla_cl.envs.vector import make_vector
    from vla_cl.tokenizer import NormStats
    from vla_cl.updaters.data import collect_rollouts

    env = make_vector("maniskill/PickCube-v1", 4, obs_mode="state")
    stats = env.get_attr("action_stats")[0]
    policy = make_policy("state_token", tokenizer=ActionTokenizer(256, 256, NormStats(stats["q01"], stats["q99"],
                         stats["mask"])), state_dim=env.single_observation_space["state"].shape[0],
                         instructions=["pick up the red cube and move it to the green target"])
    try:
        collect_rollouts(policy, env, 4, 0, torch.Generator().manual_seed(0))  # warm-up
        start = clock()
        rollouts = collect_rollouts(policy, env, episodes, 100, torch.Generator().manual_seed(1))
        return len(rollouts) / (clock() - start)
    finally:
        env.close()




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny policies, short rollouts, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is reported")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall-clock")
    parser.add_argument("--sim", action="store_true", help="also time episode collection on ManiSkill3 PickCube")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    episodes, length = (4, 4) if args.quick else (EPISODES, LENGTH)
    clock = CLOCKS[args.clock]
    g = torch.Generator().manual_seed(0)
    rollouts = synthetic_rollouts(episodes, length, g)
    demos = Batch(rollouts.obs, rollouts.tokens)
    rows = []
    for label, policy in policies(args.quick):
        params = sum(p.numel() for p in policy.parameters())
        for name in list_updaters():
            data = demos if make_updater(name).source.needs_demos else rollouts
            samples, steps = measure(name, policy, data, repeats, clock)
            rows.append([label, f"{params:,}", name, f"{samples:,.0f}", f"{steps:.1f}"])
    print_table(
        f"Updater learning step per iteration ({len(rollouts)} rows; updater defaults; best of {repeats}, "
        f"{args.clock} time; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()})",
        ["policy", "params", "updater", "samples/s", "optimiser steps/s"],
        rows,
    )
    if args.sim:
        rate = collection_rate(4 if args.quick else 16, clock)
        print_table("Episode collection (state_token on PickCube-v1, 4 in-process envs, physx_cpu)",
                    ["collector", "env steps/s"], [["collect_rollouts", f"{rate:,.0f}"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
