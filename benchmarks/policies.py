"""Benchmark the CPU-scale policies at their default sizes: parameters and time per batch.

    python benchmarks/policies.py            # best of 5 repeats
    python benchmarks/policies.py --quick    # seconds; a smoke test runs this

One table, one row per policy configuration (the razor experiment's: 16-dim state, 7-D actions,
256 bins, 64x64 images): parameter count, ``action_logits`` forward time at batch 64 (no gradient),
forward + backward of a behaviour-cloning cross-entropy at batch 64, and sampled ``generate``
throughput in actions/s at batch 64 and at batch 1 (one environment stepping alone).

Timings are the best of ``--repeats`` runs of this process's CPU time (``--clock wall`` for wall-clock
time): on shared cores other jobs inflate wall-clock times, while CPU time counts this process's work.
Run with OMP_NUM_THREADS=1 for figures comparable across machines.
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
from vla_cl.policies import ObsBatch, Policy, make_policy
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




def observations(n: int, seed: int = 0) -> ObsBatch:
    g = torch.Generator().manual_seed(seed)
    return ObsBatch(
        [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
        state=torch.randn(n, STATE_DIM, generator=g),
        image=torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8),
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




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat at batch 8 (a smoke run)")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
