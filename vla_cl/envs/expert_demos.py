"""Each task's scripted-expert demonstrations, recorded once into ``root/<task>/`` and read back after.

Pretraining pi0 (``vla-cl pretrain``, the razor's first stage) and ``vla-cl continual`` both learn from the
experts of several tasks. :func:`expert_demos` records the tasks that lack a set recorded the same way (same
task, episode count, first seed, observation mode and image options), in parallel processes, with
``vla_cl.envs.demos``' collector, and reads every set back; a run started again reuses what it recorded.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any


def task_slug(task: str) -> str:
    """A task id as one folder name (``maniskill/PushCube-v1`` -> ``maniskill_PushCube-v1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def _collect_one(task: str, n: int, seed: int, folder: str, options: dict[str, Any]) -> str:
    import torch

    from vla_cl.envs.demos import collect_demos, save_demos

    torch.set_num_threads(1)
    save_demos(collect_demos(task, n, seed=seed, **options), folder)
    return folder


def _cached(folder: Path, task: str, n: int, seed: int, options: dict[str, Any]):
    from vla_cl.envs.demos import load_demos

    if not folder.exists():
        return None
    try:
        demos = load_demos(folder)
    except (ValueError, OSError):
        return None
    meta, recorded = demos.meta, demos.meta.get("env_options", {})
    same = (meta.get("task_id") == task and meta["counts"]["episodes"] == n
            and meta.get("obs_mode") == options["obs_mode"]
            and meta.get("episode_seeds", [None])[0] is not None and min(meta["episode_seeds"]) >= seed
            and (options["obs_mode"] == "state" or (meta.get("image_size") == options["image_size"]
                                                    and recorded.get("camera_size") == options["camera_size"])))
    return demos if same else None


def expert_demos(tasks: list[str], n: int, seed: int, root: Path, *, obs_mode: str = "state", image_size: int = 64,
                 camera_size: int | None = None, workers: int = 1, log: Any = None) -> list:
    """Each task's expert demonstrations in ``root/<task>/``: read when already there (recorded the same way),
    else recorded (tasks in parallel processes). Episode k of every task is attempted from seed ``seed + k``."""
    from vla_cl.envs.demos import load_demos
    from vla_cl.workers import pool as worker_pool

    options = {"obs_mode": obs_mode, "image_size": image_size, "camera_size": camera_size}
    todo = [t for t in tasks if _cached(root / task_slug(t), t, n, seed, options) is None]
    if todo:
        start = time.perf_counter()
        args = [(t, n, seed, str(root / task_slug(t)), options) for t in todo]
        if workers > 1 and len(todo) > 1:
            with worker_pool(min(workers, len(todo))) as pool:
                list(pool.map(_collect_one, *zip(*args)))
        else:
            for a in args:
                _collect_one(*a)
        if log is not None:
            log(event="demos", tasks=todo, seconds=round(time.perf_counter() - start, 2))
    return [load_demos(root / task_slug(t)) for t in tasks]
