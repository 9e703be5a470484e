"""Benchmark the registered policies on the CPU: parameters, time per batch, and what acting costs.

    python benchmarks/policies.py            # best of 5 repeats
    python benchmarks/policies.py --quick    # seconds; a smoke test runs this

Two tables.

1. The CPU-scale policies at their default sizes (the razor experiment's configurations: 16-dim state,
   7-D actions, 256 bins, 64x64 images): parameter count, ``action_logits`` forward time at batch 64
   (no gradient), forward + backward of a behaviour-cloning cross-entropy at batch 64, and sampled
   ``generate`` throughput in actions/s at batch 64 and at batch 1 (one environment stepping alone).
2. Rollout cost against decode cost, for every registered policy (``list_policies()``; one that is only
   built from a checkpoint at full size, i.e. ``openvla``, at its ``tiny`` preset and its own image size),
   measured side by side in one run at batch 1 and batch 8. "decode" is the policy's decoding alone
   (``_decode_tokens``: the forward passes and the sampling); "rollout" is what acting in an env costs per
   call, ``generate`` (decoding, then tokens -> un-normalised actions). Their ratio should stay <= 1.1.
   Why: ``generate`` used to pay a second, teacher-forced forward (``log_probs`` on the tokens just
   chosen) per call, for log-probs that acting never reads; now they come lazily from the decoding pass's
   own logits (``ActionSample.log_probs``), and this ratio guards against that cost coming back.

Timings are the best of ``--repeats`` runs of this process's CPU time (``--clock wall`` for wall-clock
time): on shared cores other jobs inflate wall-clock times, while CPU time counts this process's work.
Decode and rollout are timed in alternation (one call of each per round), so that load changing over
the run shifts both alike. Run with OMP_NUM_THREADS=1 for figures comparable across machines.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vla_cl.benchmarking import CLOCKS, best_time, print_table
from vla_cl.policies import ObsBatch, Policy, get_policy_class, list_policies, make_policy
from vla_cl.tokenizer import ActionTokenizer

INSTRUCTIONS = [
    "pick up the red cube and move it to the green target",
    "push the blue cube forward onto the target",
    "pull the blue cube back onto the target",
    "stack the red cube on top of the green cube",
]
STATE_DIM, IMAGE_SIZE = 16, 64
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("state_token", "state_token", {"state_dim": STATE_DIM, "value_head": True}),
    ("small_vlm (image)", "small_vlm", {"value_head": True}),
    ("small_vlm (image + state)", "small_vlm", {"state_dim": STATE_DIM, "value_head": True}),
]
# Statistics of a Panda end-effector-delta task, so that rollouts un-normalise as they do in use.
ACTION_STATS = {"q01": [-1.0] * 6 + [-1.0], "q99": [1.0] * 6 + [1.0], "mask": [True] * 6 + [False]}
ROLLOUT_BATCHES = (1, 8)  # one env stepping alone; a vector of 8 envs
ROLLOUT_TARGET = 1.1  # rollout/decode: converting tokens to actions must stay a small part of acting


def observations(n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> ObsBatch:
    g = torch.Generator().manual_seed(seed)
    return ObsBatch(
        [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
        state=torch.randn(n, STATE_DIM, generator=g),
        image=torch.randint(0, 256, (n, image_size, image_size, 3), generator=g, dtype=torch.uint8),
    )


def measure(policy: Policy, batch: int, repeats: int, clock: Callable[[], float]) -> list[str]:
    obs, single = observations(batch), observations(1, seed=1)
    tokens = torch.randint(0, 256, (batch, policy.action_dim), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)

    def forward() -> None:
        with torch.no_grad():
            policy.action_logits(obs, tokens)

    def forward_backward() -> None:
        logits = policy.action_logits(obs, tokens)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)).backward()
        policy.zero_grad(set_to_none=True)

    seconds = {
        "forward": best_time(forward, repeats, clock, warmup=True),
        "backward": best_time(forward_backward, repeats, clock, warmup=True),
        "generate": best_time(lambda: policy.generate(obs, generator=generator), repeats, clock, warmup=True),
        "generate1": best_time(lambda: policy.generate(single, generator=generator), repeats, clock, warmup=True),
    }
    params = sum(p.numel() for p in policy.parameters())
    return [
        f"{params:,}",
        f"{seconds['forward'] * 1e3:.2f}",
        f"{seconds['backward'] * 1e3:.2f}",
        f"{batch / seconds['generate']:,.0f}",
        f"{1 / seconds['generate1']:,.0f}",
    ]


def registered_policies() -> list[tuple[str, Policy]]:
    """One policy per registered name, built for a 16-dim-state task with ``ACTION_STATS``: at its default
    size, or at its ``tiny`` preset when it is only built from a checkpoint at full size (``openvla``,
    whose 7B weights a CPU benchmark cannot hold)."""
    built = []
    for name in list_policies():
        cls = get_policy_class(name)
        label = name
        common = {"state_dim": STATE_DIM, "action_stats": ACTION_STATS, "instructions": INSTRUCTIONS,
                  "value_head": False, "seed": 0}
        try:
            policy = cls.for_task(preset="default", **common)
        except ValueError:
            policy, label = cls.for_task(preset="tiny", **common), f"{name} (tiny)"
        if policy.image_size is not None:
            label += f", {policy.image_size}px"
        built.append((label, policy.eval()))
    return built


def decode_and_rollout(policy: Policy, obs: ObsBatch, repeats: int, clock: Callable[[], float]) -> tuple[float, float]:
    """Best seconds per call of decoding alone and of ``generate`` on ``obs``, timed in alternation (one call
    of each per round, ``repeats`` rounds after a warm-up) with identically seeded generators."""
    g_decode, g_rollout = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)

    def decode() -> None:
        with torch.no_grad():  # as inside generate: acting never builds a graph
            policy._decode_tokens(obs, greedy=False, temperature=1.0, generator=g_decode)

    def rollout() -> None:
        policy.generate(obs, greedy=False, temperature=1.0, generator=g_rollout)

    decode(), rollout()  # warm-up
    decode_s = rollout_s = float("inf")
    for _ in range(repeats):
        decode_s = min(decode_s, best_time(decode, 1, clock))
        rollout_s = min(rollout_s, best_time(rollout, 1, clock))
    return decode_s, rollout_s


def measure_rollout(policy: Policy, repeats: int, clock: Callable[[], float]) -> list[str]:
    """Decode and rollout ms per call, and their ratio, at each of ``ROLLOUT_BATCHES``."""
    cells = []
    for batch in ROLLOUT_BATCHES:
        obs = observations(batch, seed=2, image_size=policy.image_size or IMAGE_SIZE)
        decode_s, rollout_s = decode_and_rollout(policy, obs, repeats, clock)
        ratio = rollout_s / decode_s
        cells += [f"{decode_s * 1e3:.3f}", f"{rollout_s * 1e3:.3f}",
                  f"{ratio:.2f}" + ("" if ratio <= ROLLOUT_TARGET else " (over)")]
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat at batch 8, 3 rollout rounds (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the best is reported")
    parser.add_argument(
        "--batch", type=int, default=64, help="batch size of the forward/backward/generate rows"
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall-clock"
    )
    args = parser.parse_args(argv)
    repeats, batch = (1, 8) if args.quick else (args.repeats, args.batch)
    torch.manual_seed(0)
    tokenizer = ActionTokenizer(vocab_size=256, n_bins=256)
    rows = []
    for label, name, config in CONFIGS:
        policy = make_policy(name, tokenizer=tokenizer, instructions=INSTRUCTIONS, **config)
        rows.append([label, *measure(policy, batch, repeats, CLOCKS[args.clock])])
    print_table(
        f"CPU policies, float32, batch {batch}, best of {repeats} ({args.clock} time; torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})",
        [
            "policy",
            "params",
            "forward ms",
            "fwd+bwd ms",
            "generate actions/s",
            "generate actions/s (batch 1)",
        ],
        rows,
    )
    rollout_repeats = 3 if args.quick else 10 * args.repeats  # calls are ms-short: more rounds, cheaply
    rows = [[label, *measure_rollout(policy, rollout_repeats, CLOCKS[args.clock])]
            for label, policy in registered_policies()]
    header = ["policy"]
    for batch in ROLLOUT_BATCHES:
        header += [f"decode ms (batch {batch})", f"rollout ms (batch {batch})", f"rollout/decode (batch {batch})"]
    print_table(
        f"Rollout vs decode, every registered policy (sampled, temperature 1; best of {rollout_repeats} "
        f"alternating rounds, {args.clock} time); target rollout/decode <= {ROLLOUT_TARGET}",
        header,
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
