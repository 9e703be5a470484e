"""Benchmark how vla-cl scales out: Ray against the plain process pool, env workers, weight syncs, and a projection.

    python benchmarks/scale.py            # 2 tasks x 2 axes x 10 episodes; 4 short training trials; ...
    python benchmarks/scale.py --quick    # a smoke run

Table 1: one evaluation suite (``state_token`` policy, sampled actions) with 2 workers on each backend
(``vla_cl.workers``: ``ray.executor=process`` and ``ray``), wall clock, each pool already started (its start-up
shown apart), alternating the backends and keeping each one's best of ``--repeats`` runs; the results must be
identical (checked).

Table 2: a sweep of short ``vla-cl train`` trials (PPO on PushCube, as the razor's sweep runs them,
``vla_cl.razor.sweep.train_trial``) on each backend with 2 workers: trials per hour, wall clock, each pool's
start-up included (a fresh Ray instance; a sweep pays it once). "Mean seconds in a trial" is measured inside the
trial: the first trials of a fresh worker also import torch and the simulator.

Table 3: collection throughput (env steps/s) of one on-policy collection (``collect_rollouts``: 2 envs of
PushCube, state observations, the ``state_token`` policy sampling) with the envs in this process, on 1 Ray env
worker and on 2 (``vla_cl.envs.remote``), and with 2 env workers plus an inference worker; best of ``--repeats``,
each setting's workers started beforehand; the episodes must equal the in-process ones (checked).

Table 4: weight syncs from the learner to an inference worker (``vla_cl.updaters.inference``): bytes and seconds
per sync (median of 5) for the CPU policy (every weight trains) and the tiny OpenVLA with LoRA (adapters only),
and the bytes OpenVLA-7B's rank-32 adapters would take (counted from the architecture, nothing downloaded).

Table 5: a projection on paper of the paper's robot experiment (OpenVLA-7B, LoRA PPO, 2M env steps) on 1, 8 and
64 GPUs, from RL4VLA's published single-A100 run, this machine's measured env-step cost and the sync sizes above;
every input is printed with where it comes from. It is arithmetic, not a measurement.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluation import TASKS, cpu_policy  # the evaluation benchmark's policy and tasks

from vla_cl import workers
from vla_cl.benchmarking import print_table
from vla_cl.config import RayConfig
from vla_cl.evaluation import Evaluator, SuiteConfig

BACKENDS = ("process", "ray")


def evaluation_table(policy, suite: SuiteConfig, repeats: int) -> None:
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    start_up: dict[str, float] = {}
    results = {}
    evaluators = {}
    for backend in BACKENDS:
        workers.use(RayConfig(executor=backend))
        evaluators[backend] = Evaluator(suite, workers=2, progress=False)
        start = time.perf_counter()
        evaluators[backend](policy, label="warm-up")  # starts the pool (and Ray) and loads the policy
        start_up[backend] = time.perf_counter() - start
    try:
        for _ in range(repeats):
            for backend in BACKENDS:
                workers.use(RayConfig(executor=backend))
                start = time.perf_counter()
                results[backend] = evaluators[backend](policy)
                times[backend].append(time.perf_counter() - start)
    finally:
        for evaluator in evaluators.values():
            evaluator.close()
    same = all(results["ray"].cells[k].successes == c.successes and results["ray"].cells[k].lengths == c.lengths
               for k, c in results["process"].cells.items())
    episodes = sum(c.episodes for c in results["process"].cells.values())
    base = min(times["process"])
    print_table(f"1. one suite, 2 workers (wall clock, best of {repeats} runs; results identical: {same})",
                ["backend", "first run (pool start-up)", "seconds", "episodes/s", "vs process pool"],
                [[b, f"{start_up[b]:.1f}", f"{min(times[b]):.2f}", f"{episodes / min(times[b]):.1f}",
                  f"{base / min(times[b]):.2f}x"] for b in BACKENDS])
    if not same:
        raise SystemExit("the two backends gave different episodes")


def sweep_table(trials: int, iterations: int) -> None:
    from vla_cl.razor.sweep import train_trial

    policy_dir = Path(tempfile.mkdtemp(prefix="vla-cl-scale-"))
    try:
        init = cpu_policy().save_pretrained(policy_dir / "pi0")
        rows = []
        for backend in BACKENDS:
            workers.use(RayConfig(executor=backend))
            if backend == "ray":
                import ray

                ray.shutdown()  # a fresh instance, so that both rows pay their start-up
            out = policy_dir / backend
            layers = [{"task": TASKS[0], "init": str(init), "updater": {"name": "ppo", "episodes": 4},
                       "iterations": iterations, "num_envs": 2, "eval_every": 0, "eval_episodes": 2,
                       "probe_episodes": 1, "progress": False, "tensorboard": False, "max_episode_steps": 20,
                       "seed": seed} for seed in range(trials)]
            start = time.perf_counter()
            with workers.pool(2) as pool:
                futures = [pool.submit(train_trial, [layer], str(out / f"trial{i}")) for i, layer in enumerate(layers)]
                wait(futures)
                summaries = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            rows.append([backend, str(trials), f"{seconds:.1f}", f"{trials / seconds * 3600:.0f}",
                         f"{sum(s['seconds'] for s in summaries) / trials:.1f}"])
        print_table("2. a sweep of short PPO trials, 2 workers (wall clock, pool start-up included)",
                    ["backend", "trials", "seconds", "trials/hour", "mean seconds in a trial"], rows)
    finally:
        shutil.rmtree(policy_dir, ignore_errors=True)


def collection_table(repeats: int, episodes: int) -> float:
    """Table 3; returns the in-process env steps per second per env (the projection's CPU cost)."""
    import ray
    import torch

    from vla_cl.envs.remote import RayVectorEnv
    from vla_cl.envs.vector import make_vector
    from vla_cl.updaters.data import collect_rollouts
    from vla_cl.updaters.inference import InferenceWorker

    policy = cpu_policy()
    options = {"obs_mode": "state", "max_episode_steps": 40}
    if not ray.is_initialized():
        workers.start_ray(RayConfig(executor="ray"), 2)
    settings = {
        "in this process": lambda: (make_vector(TASKS[0], 2, **options), None),
        "1 env worker": lambda: (RayVectorEnv(TASKS[0], 2, 1, options=options), None),
        "2 env workers": lambda: (RayVectorEnv(TASKS[0], 2, 2, options=options), None),
        "2 env workers + inference worker": lambda: (RayVectorEnv(TASKS[0], 2, 2, options=options, cpus=0.5),
                                                     InferenceWorker.start(policy, cpus=1.0)),
    }
    rows, reference, base = [], None, None
    for name, make in settings.items():
        env, inference = make()
        try:
            best, steps, result = float("inf"), 0, None
            for _ in range(repeats):
                actor = inference.actor() if inference is not None else None
                start = time.perf_counter()
                result = collect_rollouts(policy, env, episodes, 1000, torch.Generator().manual_seed(0), actor=actor)
                best, steps = min(best, time.perf_counter() - start), len(result)
        finally:
            env.close()
            if inference is not None:
                inference.close()
        reference = result if reference is None else reference
        same = torch.equal(result.tokens, reference.tokens) and torch.equal(result.reward, reference.reward)
        base = base or steps / best
        rows.append([name, str(steps), f"{best:.2f}", f"{steps / best:.0f}", f"{steps / best / base:.2f}x",
                     str(same)])
        if not same:
            raise SystemExit(f"{name}: the episodes differ from the in-process ones")
    print_table(f"3. collection throughput, {episodes} episodes on 2 envs of {TASKS[0]} (best of {repeats})",
                ["where the envs and the policy run", "env steps", "seconds", "env steps/s", "vs in-process",
                 "same episodes"], rows)
    return base / 2


def sync_table() -> int:
    """Table 4; returns OpenVLA-7B's rank-32 adapter bytes (float32)."""
    import statistics

    from vla_cl.policies.openvla import OpenVLAPolicy
    from vla_cl.updaters.inference import InferenceWorker

    tiny = OpenVLAPolicy.tiny()
    tiny.prepare_finetuning(lora_rank=4)
    rows = []
    for name, policy in (("state_token (every weight)", cpu_policy()), ("tiny OpenVLA, LoRA r=4 (adapters)", tiny)):
        worker = InferenceWorker.start(policy, cpus=1.0)
        try:
            measured = [worker.sync(policy) for _ in range(5)]
        finally:
            worker.close()
        total = sum(p.numel() * p.element_size() for p in policy.parameters())
        sent = measured[0]["sync/bytes"]
        rows.append([name, f"{total / 1e6:.2f}", f"{sent / 1e6:.3f}",
                     f"{statistics.median(m['sync/seconds'] for m in measured) * 1e3:.1f}"])
    adapters, weights = openvla_7b_sizes(32)
    rows.append(["OpenVLA-7B, LoRA r=32 (counted, not run; language model in bf16)", f"{weights * 2 / 1e6:.0f}",
                 f"{adapters * 4 / 1e6:.0f}", "-"])
    print_table("4. weight sync to an inference worker (median of 5; MB: 10^6 bytes)",
                ["policy", "all weights MB", "sent per sync MB", "ms per sync"], rows)
    return adapters * 4


def openvla_7b_sizes(rank: int) -> tuple[int, int]:
    """(LoRA parameters on every linear layer of OpenVLA-7B's language model but its head, all parameters of the
    language model), from the architecture on the meta device."""
    import torch
    from transformers import LlamaForCausalLM

    from vla_cl.policies.openvla import OpenVLAConfig

    with torch.device("meta"):
        lm = LlamaForCausalLM(OpenVLAConfig().llama_config())
    adapters = sum(rank * (m.in_features + m.out_features) for name, m in lm.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
    return adapters, sum(p.numel() for p in lm.parameters())


# Published figures the projection starts from (sources in README "Parallel jobs and Ray").
RL4VLA_HOURS, RL4VLA_STEPS, RL4VLA_ENVS, RL4VLA_EPISODE = 42.0, 2_000_000, 64, 80  # one A100 (RL4VLA)
RL4VLA_OPTIMISER_STEPS = 32  # per update: 5,120 samples in minibatches of 8, 20 accumulated (its code's defaults)
LINKS = {8: ("NVLink, one node", 150e9), 64: ("InfiniBand between 8 nodes", 25e9)}  # all-reduce bus bytes/s


def projection_table(env_step_seconds_cpu: float, adapter_bytes: int) -> None:
    """Table 5 (see the module docstring): data-parallel ranks, each with RL4VLA's 64 envs and its own rollouts
    (collocated), the LoRA gradients all-reduced every optimiser step, no weight sync (each rank acts itself)."""
    per_update_steps = RL4VLA_ENVS * RL4VLA_EPISODE
    updates = RL4VLA_STEPS / per_update_steps
    update_seconds = RL4VLA_HOURS * 3600 / updates
    rows = []
    for gpus in (1, 8, 64):
        link, bandwidth = LINKS.get(gpus, ("-", float("inf")))
        ring = 2 * (gpus - 1) / gpus * adapter_bytes / bandwidth if gpus > 1 else 0.0  # bytes each rank moves
        seconds = update_seconds + RL4VLA_OPTIMISER_STEPS * ring  # per update, every rank in parallel
        steps_per_s = gpus * per_update_steps / seconds
        hours = RL4VLA_STEPS / steps_per_s / 3600
        rows.append([str(gpus), link, f"{ring * 1e3:.1f}", f"{steps_per_s:.1f}", f"{hours:.1f}",
                     f"{hours * gpus:.1f}", f"{steps_per_s * env_step_seconds_cpu:.1f}"])
    print_table("5. projection on paper: OpenVLA-7B LoRA PPO, 2M env steps, data-parallel ranks of 64 envs each",
                ["GPUs", "all-reduce link", "ms per gradient all-reduce", "env steps/s", "hours", "GPU-hours",
                 "CPU cores to step the envs (PushCube cost here)"], rows)
    print(f"inputs: RL4VLA {RL4VLA_HOURS:g} h for {RL4VLA_STEPS:,} env steps on one A100 ({update_seconds:.0f} s per "
          f"update of {per_update_steps:,} steps; {RL4VLA_OPTIMISER_STEPS} optimiser steps each); OpenVLA-7B rank-32 "
          f"adapter gradients {adapter_bytes / 1e6:.0f} MB in float32 (table 4); env step on one CPU core "
          f"{env_step_seconds_cpu * 1e3:.1f} ms (table 3, in-process); links {LINKS[8][1] / 1e9:g} and "
          f"{LINKS[64][1] / 1e9:g} GB/s (assumed bus bandwidths). Not modelled: stragglers, the value head, "
          "evaluation, GPU-simulated envs (RL4VLA steps ManiSkill on the GPU).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few episodes and trials (a smoke run)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and axis in table 1")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each backend in table 1")
    parser.add_argument("--trials", type=int, default=4, help="training trials per backend in table 2")
    parser.add_argument("--collect", type=int, default=8, help="episodes per collection in table 3")
    args = parser.parse_args(argv)
    if not workers.ray_installed():
        raise SystemExit("Ray is not installed (pip install 'vla-cl[ray]'): nothing to compare")
    episodes, repeats = (2, 1) if args.quick else (args.episodes, args.repeats)
    suite = SuiteConfig(name="benchmark", tasks=TASKS, episodes=episodes, axes=["in_distribution", "position"])
    previous = workers.current()
    try:
        evaluation_table(cpu_policy(), suite, repeats)
        sweep_table(2 if args.quick else args.trials, 1 if args.quick else 3)
        workers.use(RayConfig(executor="ray"))
        steps_per_s_per_env = collection_table(repeats, 2 if args.quick else args.collect)
        adapter_bytes = sync_table()
        projection_table(1.0 / steps_per_s_per_env, adapter_bytes)
    finally:
        workers.use(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
