"""Benchmark the tasks: env steps/s with random actions, with the scripted expert, and with a policy in the loop.

    python benchmarks/envs.py                  # every ManiSkill task, 300 steps each
    python benchmarks/envs.py --quick          # one task, a few dozen steps (a smoke test runs this)
    python benchmarks/envs.py --tasks simpler/widowx_carrot_on_plate --obs-mode both   # (needs MS_ASSET_DIR)

Columns (steps/s, single env, one process):
* ``random``: the bare env, uniform random in-range actions drawn beforehand (the reference rate);
* ``expert``: the scripted expert choosing every action (scene reads + phase logic);
* ``policy``: a CPU-scale policy in the loop, the shape of the project's small policies: an MLP
  (state -> 2 x 256 -> 7 x 256 action-token logits), one forward per step at batch 1, tokens sampled
  and decoded with the ActionTokenizer into physical actions with the env's ``action_stats``;
* ``ratio``: the policy loop's rate over the bare env's rate, both from the same run (time in
  ``env.step`` over time in ``env.step`` + policy), which the shared cores' load does not skew; target
  >= 0.8 on state observations (the policy must not dominate). ``policy / random`` across columns
  gives the same figure up to that noise.

Episodes auto-restart from consecutive seeds when they end. Timings are the best of ``--repeats``
runs; the machine's cores are shared, so expect noise.

A second table, when the SimplerEnv Bridge assets are under ``MS_ASSET_DIR`` (else it says it skipped them):
each Bridge scene observing camera images (rgb, resized to 224 px), steps/s with random and with expert actions
at the native 640x480 camera (SimplerEnv's protocol) and at the reduced ``--camera-sizes`` (e.g. 160x120), and
each reduced size's speed-up over the native camera, measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vla_cl.envs import list_tasks, make
from vla_cl.envs.experts import has_expert, make_expert
from vla_cl.tokenizer import ActionTokenizer, NormStats

N_BINS = 256


class TokenMLP(nn.Module):
    """state -> (7, 256) action-token logits, sized like the project's CPU policies."""

    def __init__(self, state_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 7 * N_BINS))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).view(-1, 7, N_BINS)


def timed_steps(env, choose, steps: int, seed: int) -> tuple[float, float]:
    """Step ``env`` for ``steps`` steps with ``choose(obs)`` picking actions; resets are not timed.

    Returns (seconds in ``env.step``, seconds in ``choose``), so one run gives both the loop's rate
    and the bare env's rate under the same machine load.
    """
    obs, _ = env.reset(seed=seed)
    episode = 0
    if hasattr(choose, "reset"):
        choose.reset()
    env_s = choose_s = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        action = choose(obs)
        t1 = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        t2 = time.perf_counter()
        choose_s += t1 - t0
        env_s += t2 - t1
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
            if hasattr(choose, "reset"):
                choose.reset()
    return env_s, choose_s


class RandomActions:
    def __init__(self, env, seed: int, steps: int):
        rng = np.random.default_rng(seed)
        self.actions = rng.uniform(env.action_space.low, env.action_space.high, (steps, 7)).astype(np.float32)
        self.t = 0

    def __call__(self, obs):
        self.t += 1
        return self.actions[(self.t - 1) % len(self.actions)]


class ExpertActions:
    def __init__(self, env, task_id: str):
        self.env, self.expert = env, make_expert(task_id)

    def reset(self):
        self.expert.reset(self.env)

    def __call__(self, obs):
        return self.expert.act(self.env)


class PolicyActions:
    def __init__(self, env, seed: int):
        torch.manual_seed(seed)
        self.model = TokenMLP(env.observation_space["state"].shape[0]).eval()
        self.tokenizer = ActionTokenizer(vocab_size=N_BINS, n_bins=N_BINS,
                                         stats=NormStats.from_checkpoint(env.action_stats))
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, obs):
        logits = self.model(torch.from_numpy(obs["state"])[None])
        tokens = torch.multinomial(torch.softmax(logits[0], -1), 1, generator=self.generator)[:, 0]
        normalized = self.tokenizer.decode(tokens.numpy())
        return self.tokenizer.unnormalize(normalized).astype(np.float32)


def measure(task_id: str, steps: int, repeats: int, obs_mode: str, seed: int = 0, **options) -> dict:
    start = time.perf_counter()
    env = make(task_id, obs_mode=obs_mode, **{"image_size": 128, **options})
    created = time.perf_counter() - start
    columns = {"random": lambda: RandomActions(env, seed, steps)}
    if has_expert(task_id):
        columns["expert"] = lambda: ExpertActions(env, task_id)
    if "state" in env.observation_space.spaces:
        columns["policy"] = lambda: PolicyActions(env, seed)
    best: dict[str, float] = {}
    ratio = 0.0
    for _ in range(repeats):  # interleaved, so a burst of load on the shared cores hits every column
        for name, make_choose in columns.items():
            env_s, choose_s = timed_steps(env, make_choose(), steps, seed)
            best[name] = max(best.get(name, 0.0), steps / (env_s + choose_s))
            if name == "policy":
                ratio = max(ratio, env_s / (env_s + choose_s))
    env.close()
    nan = float("nan")
    return {"task": task_id, "create_s": created, "random": best["random"], "expert": best.get("expert", nan),
            "policy": best.get("policy", nan), "ratio": ratio if "policy" in best else nan}


def bridge_assets() -> str | None:
    """Why the Bridge table cannot run here (missing assets), or None."""
    from vla_cl.envs.assets import MissingAssetError, check_assets

    try:
        check_assets(("bridge_v2_real2sim", "widowx250s"))
    except MissingAssetError as error:
        return str(error).splitlines()[0]
    return None


def bridge_table(tasks: list[str], camera_sizes: list[int], steps: int, repeats: int) -> None:
    """Steps/s of the Bridge scenes at the native camera and at each reduced one (see the module docstring)."""
    import warnings

    missing = bridge_assets()
    if missing:
        print(f"\nBridge scenes skipped: {missing}")
        return
    sizes = [None, *camera_sizes]
    label = lambda size: "640x480" if size is None else f"{size}x{round(size * 3 / 4)}"
    print(f"\nBridge scenes, rgb observations resized to 224 px, env steps/s (random / expert), {steps} steps x best "
          f"of {repeats}; speed-up of each reduced camera over 640x480 (random actions)")
    header = f"{'task':34s} " + " ".join(f"{label(z):>17s}" for z in sizes) + " " + " ".join(
        f"{'x ' + label(z):>11s}" for z in camera_sizes)
    print(header)
    print("-" * len(header))
    for task in tasks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the offline copy's stand-in notices, once per scene
            rows = {z: measure(task, steps, repeats, "rgb", image_size=224, camera_size=z) for z in sizes}
        cells = " ".join(f"{rows[z]['random']:8.1f} /{rows[z]['expert']:7.1f}" for z in sizes)
        ups = " ".join(f"{rows[z]['random'] / rows[None]['random']:11.2f}" for z in camera_sizes)
        print(f"{task:34s} {cells} {ups}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one task, few steps (smoke test)")
    parser.add_argument("--tasks", nargs="*", help="task ids (default: every maniskill/ task)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per column")
    parser.add_argument("--repeats", type=int, default=2, help="runs per column; the best is reported")
    parser.add_argument("--obs-mode", default="state", choices=("state", "rgb", "both"))
    parser.add_argument("--bridge", nargs="*", default=None,
                        help="Bridge scenes for the camera table (default: all four; --quick: the carrot scene)")
    parser.add_argument("--camera-sizes", type=int, nargs="+", default=[160], help="reduced Bridge camera widths")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tasks = args.tasks or (["maniskill/PushCube-v1"] if args.quick else list_tasks("maniskill"))
    steps, repeats = (30, 1) if args.quick else (args.steps, args.repeats)

    print(f"env steps/s, 1 env, obs_mode={args.obs_mode}, {steps} steps x best of {repeats} "
          f"(torch threads {torch.get_num_threads()})")
    header = f"{'task':34s} {'create s':>8s} {'random':>8s} {'expert':>8s} {'policy':>8s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    for task in tasks:
        r = measure(task, steps, repeats, args.obs_mode)
        print(f"{r['task']:34s} {r['create_s']:8.1f} {r['random']:8.1f} {r['expert']:8.1f} {r['policy']:8.1f} "
              f"{r['ratio']:6.2f}", flush=True)
    bridge = args.bridge or (["simpler/widowx_carrot_on_plate"] if args.quick else list_tasks("simpler"))
    bridge_table(bridge, args.camera_sizes, *((20, 1) if args.quick else (max(60, steps // 3), repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
