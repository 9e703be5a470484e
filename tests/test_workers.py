"""Where parallel jobs run (vla_cl.workers): the process pool and Ray tasks give the same results, a job whose Ray
worker dies is run again and counted once, and a Ray address nothing answers at is refused at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from vla_cl import workers
from vla_cl.config import RayConfig

pytest.importorskip("ray")


def square_and_where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def dies_once(x: int, marker: str) -> int:
    """Kills its own worker process the first time it runs with x == 1 (the marker file remembers)."""
    if x == 1 and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def fails(x: int) -> int:
    raise ZeroDivisionError(f"job {x} failed by itself")


@pytest.fixture
def backend():
    """Run a test's pools on the given backend, then restore the default."""
    def set_to(executor: str) -> None:
        workers.use(RayConfig(executor=executor))

    yield set_to
    workers.use(RayConfig())


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_both_backends_run_every_job_and_return_its_result(backend, executor):
    backend(executor)
    with workers.pool(2) as pool:
        results = [f.result() for f in [pool.submit(square_and_where, x) for x in range(6)]]
    assert [r for r, _ in results] == [x * x for x in range(6)]
    assert all(pid != os.getpid() for _, pid in results)  # in worker processes, not here


def test_a_job_whose_ray_worker_dies_is_run_again_and_counted_once(backend, tmp_path):
    backend("ray")
    marker = tmp_path / "died"
    with workers.pool(2) as pool:
        futures = [pool.submit(dies_once, x, str(marker)) for x in range(4)]
        results = [f.result(timeout=120) for f in futures]
    assert marker.exists()  # the worker running job 1 was killed ...
    assert results == [0, 10, 20, 30]  # ... and job 1 ran again: each job's result once


def test_a_job_that_raises_is_not_retried_and_its_error_reaches_the_caller(backend):
    backend("ray")
    with workers.pool(2) as pool, pytest.raises(ZeroDivisionError, match="job 3 failed by itself"):
        pool.submit(fails, 3).result(timeout=120)


def test_an_unreachable_ray_address_is_refused_at_once_naming_it():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"ray.address: nothing answers at 127.0.0.1:9"):
        workers.use(RayConfig(address="127.0.0.1:9"))
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match="ray.address"):
        workers.use(RayConfig(address="no-port"))
    with pytest.raises(ValueError, match="ray.executor"):
        RayConfig(executor="slurm")


def test_the_command_line_names_an_unreachable_address_and_exits_2(capsys):
    from vla_cl.cli import main

    assert main(["info", "ray.address=127.0.0.1:9"]) == 2
    assert "nothing answers at 127.0.0.1:9" in capsys.readouterr().err
    workers.use(RayConfig())


def test_evaluation_gives_the_same_episodes_on_ray_as_in_processes(backend):
    from tests.test_evaluation import PULL, PUSH, short_suite, state_policy
    from vla_cl.evaluation import evaluate

    suite = short_suite(tasks=[PUSH, PULL], episodes=2)
    policy = state_policy(seed=3)
    backend("process")
    local = evaluate(policy, suite, workers=2, progress=False)
    backend("ray")
    on_ray = evaluate(policy, suite, workers=2, progress=False)
    for key, cell in local.cells.items():
        other = on_ray.cells[key]
        assert (cell.successes, cell.lengths, cell.returns) == (other.successes, other.lengths, other.returns)
