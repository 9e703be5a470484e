"""Benchmark where parallel jobs run: Ray tasks against the plain process pool, side by side in one run.

    python benchmarks/scale.py            # 2 tasks x 2 axes x 10 episodes; 4 short training trials
    python benchmarks/scale.py --quick    # a smoke run

Table 1: one evaluation suite (``state_token`` policy, sampled actions) with 2 workers on each backend
(``vla_cl.workers``: ``ray.executor=process`` and ``ray``), wall clock, each pool already started (its start-up
shown apart), alternating the backends and keeping each one's best of ``--repeats`` runs; the results must be
identical (checked).

Table 2: a sweep of short ``vla-cl train`` trials (PPO on PushCube, as the razor's sweep runs them,
``vla_cl.razor.sweep.train_trial``) on each backend with 2 workers: trials per hour, wall clock, each pool's
start-up included (a fresh Ray instance; a sweep pays it once). "Mean seconds in a trial" is measured inside the
trial: the first trials of a fresh worker also import torch and the simulator.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few episodes and trials (a smoke run)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and axis in table 1")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each backend in table 1")
    parser.add_argument("--trials", type=int, default=4, help="training trials per backend in table 2")
    args = parser.parse_args(argv)
    if not workers.ray_installed():
        raise SystemExit("Ray is not installed (pip install 'vla-cl[ray]'): nothing to compare")
    episodes, repeats = (2, 1) if args.quick else (args.episodes, args.repeats)
    suite = SuiteConfig(name="benchmark", tasks=TASKS, episodes=episodes, axes=["in_distribution", "position"])
    previous = workers.current()
    try:
        evaluation_table(cpu_policy(), suite, repeats)
        sweep_table(2 if args.quick else args.trials, 1 if args.quick else 3)
    finally:
        workers.use(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
