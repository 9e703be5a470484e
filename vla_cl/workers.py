"""Where independent jobs run: spawned worker processes on this machine, or Ray tasks on a local Ray instance or
a cluster.

Every parallel part of vla-cl (the razor's trials, ParityMNIST's runs, evaluation jobs, expert demonstrations,
the LLM track's evaluations) submits module-level functions to :func:`pool`, a ``concurrent.futures.Executor``,
so the same code runs on either backend and gives the same results (each job's randomness comes from its
arguments, never from the worker it lands on):

* ``process``: a ``ProcessPoolExecutor`` of spawned processes; one machine; a worker that dies breaks the pool
  (``BrokenProcessPool``) and the command stops, to be started again (finished jobs are kept by their callers).
* ``ray``: each job one Ray task of one CPU (``ray.remote(...).options(num_cpus=1)``) on the Ray instance
  ``RayConfig.address`` names, or on a local one started for the command with as many CPUs as it asks workers
  (``ray.init(num_cpus=...)``). A job whose worker process dies (killed, out of memory) is run again on another
  worker, up to ``RayConfig.retries`` times (Ray's task retries); an exception raised by the job itself is not
  retried. Callers count a job once, when its result arrives, so a retried job is never half-counted; the
  razor's trials and evaluation jobs resume from what the lost attempt wrote.

``RayConfig.executor`` picks the backend: ``auto`` (the default) is Ray when it is installed (``make setup``
installs it), else the process pool, which stays as the fallback of an install without Ray. Commands set it
from their ``ray`` fields (``vla-cl razor ray.address=HOST:PORT``, ``ray.executor=process``) with :func:`use`.
An address that cannot be reached fails at once, naming it, before any job.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from vla_cl.config import RayConfig

_CURRENT = RayConfig()


def use(config: RayConfig) -> RayConfig:
    """Make ``config`` the backend of every :func:`pool` this process opens from now on (commands call it once);
    returns the one it replaces."""
    global _CURRENT
    if backend(config) == "ray" and not ray_installed():
        raise ValueError("invalid value for ray.executor: ray, but Ray is not installed (pip install 'vla-cl[ray]', "
                         "or ray.executor=process)")
    if config.address is not None:
        check_address(config.address)
    previous, _CURRENT = _CURRENT, config
    return previous


def current() -> RayConfig:
    return _CURRENT


def backend(config: RayConfig) -> str:
    """process or ray: ``config.executor``, with auto resolved (Ray when it is installed)."""
    if config.executor != "auto":
        return config.executor
    return "ray" if ray_installed() else "process"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse a Ray address nothing answers at within ``timeout`` seconds, naming it (Ray itself retries for
    tens of seconds before it gives up)."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid value for ray.address: {address!r} (allowed: HOST:PORT or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"invalid value for ray.address: nothing answers at {address} ({error}); start the cluster "
                         "(`ray start --head`) or leave ray.address unset for a local instance") from None


def pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Executor:
    """An executor of ``workers`` parallel jobs on the current backend (see the module docstring); ``initializer``
    runs once in each worker process before its first job."""
    if backend(_CURRENT) == "ray":
        return RayExecutor(workers, _CURRENT, initializer, initargs)
    import multiprocessing

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                               initargs=initargs)


_INITIALISED: set[str] = set()  # in a Ray worker: the initializers that already ran there


def _run(initializer: Callable[..., None] | None, initargs: tuple, fn: Callable[..., Any], args: tuple,
         kwargs: dict) -> Any:
    """A job in a Ray worker: the pool's initializer first, once per worker process, then the job."""
    if initializer is not None:
        key = f"{initializer.__module__}.{initializer.__qualname__}{initargs!r}"
        if key not in _INITIALISED:
            initializer(*initargs)
            _INITIALISED.add(key)
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """``concurrent.futures`` over Ray tasks: ``submit`` returns the task's future (``ObjectRef.future()``)."""

    def __init__(self, workers: int, config: RayConfig, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()):
        import ray

        if not ray.is_initialized():
            start_ray(config, workers)
        self._remote = ray.remote(_run).options(num_cpus=1, max_retries=config.retries, retry_exceptions=False)
        self._initializer, self._initargs = initializer, initargs
        self._futures: list[Future] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future = self._remote.remote(self._initializer, self._initargs, fn, args, kwargs).future()
        self._futures.append(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for future in self._futures:
                future.cancel()
        self._futures = []  # the Ray instance lives on for the command's next pool; it ends with the process


def start_ray(config: RayConfig, workers: int) -> None:
    """Connect to ``config.address``, or start a local instance with ``workers`` CPUs; quietly (no dashboard, no
    worker logs in the command's log, no usage reporting)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance for one command, on this machine only
    if config.address is not None:
        check_address(config.address)
        ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    else:  # the workers import what this process can, as spawned processes do (they get its sys.path)
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})
