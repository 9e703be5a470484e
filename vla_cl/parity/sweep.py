"""The ParityMNIST sweep: prepare pi0 (and the RL teacher) once, then every fine-tuning run across processes.

What the run directory holds, so that an interrupted sweep resumes where it stopped:

    artifacts/pi0.safetensors, pi0.json          the pretrained base policy (trained once per sweep)
    artifacts/pi0_fisher.safetensors             its diagonal Fisher on old-task inputs
    artifacts/teacher.safetensors, teacher.json  the GRPO policy distill learns from
    runs/<run_id>.json                           one finished run: its spec, every evaluation, the final one

A run whose result file exists is never redone; result files are written to a temporary name and renamed,
so a killed sweep leaves complete files or none. Each worker process builds the shared state once (data
from the cache, pi0, the teacher, the evaluation reference) and runs single-threaded, because many small
processes use the cores better than torch's threads do on matrices this small.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_cl.config import option, require
from vla_cl.files import atomic_path, write_json_atomic
from vla_cl.parity.data import DataConfig, ParityData, make_splits
from vla_cl.parity.evaluate import Reference, accuracies, build_reference, fisher_of
from vla_cl.parity.methods import METHODS, RENAMED
from vla_cl.parity.model import ParityMLP, checkpoint_exists, load_checkpoint, save_checkpoint
from vla_cl.parity.train import (
    FinetuneConfig,
    PretrainConfig,
    RunSpec,
    finetune,
    finetune_data,
    pretrain,
)
from vla_cl.runs import RunDir
from vla_cl.updaters.base import SCHEDULES


@dataclasses.dataclass
class SweepConfig:
    """The grid of fine-tuning runs: every method x learning rate x epochs x schedule x seed."""

    # option() gives list defaults a default_factory, so the calls below are safe.
    methods: list = option(list(METHODS), f"methods to run, from: {', '.join(METHODS)}")
    lr_min: float = option(1e-5, "smallest learning rate of the log-spaced grid")
    lr_max: float = option(1e-3, "largest learning rate of the log-spaced grid")
    n_lrs: int = option(4, "learning rates in the grid (log-spaced from lr_min to lr_max)")
    epochs: list = option([1, 3], "fine-tuning lengths in epochs over data.n_finetune images")
    schedules: list = option(["constant", "cosine"], f"schedules, from: {', '.join(SCHEDULES)}")
    seeds: int = option(1, "repeats of every grid point, with seeds seed, seed+1, ...")
    workers: int = option(
        0, "worker processes (0: one per available CPU core; 1: run in this process)", affects_results=False
    )
    progress: bool = option(True, "show a progress bar over the runs", affects_results=False)

    def __post_init__(self) -> None:
        methods = list(self.methods)
        renamed = [f"{m!r} is now called {RENAMED[m]!r}" for m in methods if m in RENAMED]
        require(
            bool(methods) and all(m in METHODS for m in methods),
            "sweep.methods",
            methods,
            f"a non-empty list from {list(METHODS)}" + (f" ({'; '.join(renamed)})" if renamed else ""),
        )
        require(len(set(methods)) == len(methods), "sweep.methods", methods, "no repeats")
        require(
            0 < self.lr_min <= self.lr_max <= 1,
            "sweep.lr_min/lr_max",
            (self.lr_min, self.lr_max),
            "0 < lr_min <= lr_max <= 1",
        )
        require(self.n_lrs >= 1, "sweep.n_lrs", self.n_lrs, "an int >= 1")
        require(
            self.n_lrs == 1 or self.lr_min < self.lr_max, "sweep.n_lrs", self.n_lrs, "1 when lr_min == lr_max"
        )
        epochs = list(self.epochs)
        require(
            bool(epochs) and all(isinstance(e, int) and e >= 1 for e in epochs),
            "sweep.epochs",
            epochs,
            "a non-empty list of ints >= 1",
        )
        schedules = list(self.schedules)
        require(
            bool(schedules) and all(s in SCHEDULES for s in schedules),
            "sweep.schedules",
            schedules,
            f"a non-empty list from {list(SCHEDULES)}",
        )
        require(self.seeds >= 1, "sweep.seeds", self.seeds, "an int >= 1")
        require(self.workers >= 0, "sweep.workers", self.workers, "an int >= 0")


@dataclasses.dataclass
class Prepared:
    """What the report needs from the preparation step."""

    pi0: dict  # pi0's accuracies on the held-out sets
    teacher: dict | None  # the teacher run's record (None when distill is not swept)
    sources: dict  # task -> dataset description


def learning_rates(config: SweepConfig) -> list[float]:
    """The log-spaced grid, rounded to 3 significant digits so run ids stay readable."""
    grid = np.geomspace(config.lr_min, config.lr_max, config.n_lrs) if config.n_lrs > 1 else [config.lr_min]
    return [float(f"{lr:.3g}") for lr in grid]


def run_specs(config: SweepConfig, seed: int) -> list[RunSpec]:
    return [
        RunSpec(method, lr, epochs, schedule, seed + repeat)
        for method in config.methods
        for lr in learning_rates(config)
        for epochs in config.epochs
        for schedule in config.schedules
        for repeat in range(config.seeds)
    ]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def write_json_atomically(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload, indent=1)


def read_result(path: Path) -> dict | None:
    """A finished run's record, or None if the file is absent or unreadable (then the run is redone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "final" in record else None


def _teacher_spec(config: FinetuneConfig, seed: int) -> RunSpec:
    return RunSpec("grpo", config.teacher_lr, config.teacher_epochs, "constant", seed)


def prepare(
    data: ParityData,
    pretrain_config: PretrainConfig,
    finetune_config: FinetuneConfig,
    methods: list,
    seed: int,
    artifacts: Path,
) -> Prepared:
    """Train (or load) pi0, its Fisher and, if distill is swept, the RL teacher; save them in ``artifacts``."""
    from safetensors.torch import load_file, save_file

    pi0_path = artifacts / "pi0"
    if checkpoint_exists(pi0_path):
        pi0, _ = load_checkpoint(pi0_path)
        print("[parity] pi0: loaded from the run directory", flush=True)
    else:
        print(
            f"[parity] pi0: pretraining on {len(data.pretrain_new)} + {len(data.pretrain_old)} images",
            flush=True,
        )
        pi0 = pretrain(data, pretrain_config, seed)
        save_checkpoint(
            pi0, pi0_path, {"role": "pi0", "pretrain": dataclasses.asdict(pretrain_config), "seed": seed}
        )
    fisher_path = artifacts / "pi0_fisher.safetensors"
    if fisher_path.exists():
        fisher = load_file(str(fisher_path))
    else:
        fisher = fisher_of(pi0, data, torch.Generator().manual_seed(seed))
        with atomic_path(fisher_path) as tmp:  # a kill mid-write must not leave a file later runs trust
            save_file({name: f.contiguous() for name, f in fisher.items()}, str(tmp))
    reference = build_reference(pi0, data, fisher)
    pi0_metrics = accuracies(
        reference.new_logits, reference.new_digits, reference.old_logits, reference.old_labels
    )

    teacher_record = None
    if "distill" in methods:
        teacher_path = artifacts / "teacher"
        if checkpoint_exists(teacher_path):
            _, meta = load_checkpoint(teacher_path)
            teacher_record = meta["record"]
        else:
            spec = _teacher_spec(finetune_config, seed)
            print(f"[parity] RL teacher for distill: {spec.run_id}", flush=True)
            teacher, teacher_record = finetune(
                spec, pi0.state_dict(), finetune_data(data, pi0, reference, None), finetune_config
            )
            teacher_record = {**teacher_record, "checkpoints": teacher_record["checkpoints"][-1:]}
            save_checkpoint(teacher, teacher_path, {"role": "teacher", "record": teacher_record})
    return Prepared(pi0=pi0_metrics, teacher=teacher_record, sources=data.sources)


# --------------------------------------------------------------------------------- worker processes

_WORKER: dict[str, Any] = {}


def init_worker(
    data_config: DataConfig, finetune_config: FinetuneConfig, seed: int, artifacts: Path, runs_dir: Path
) -> None:
    """Build a process's shared state once: data (from the cache), pi0, teacher, evaluation reference."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    data = make_splits(data_config, seed)
    pi0, _ = load_checkpoint(artifacts / "pi0")
    fisher = load_file(str(artifacts / "pi0_fisher.safetensors"))
    reference: Reference = build_reference(pi0, data, fisher)
    teacher: ParityMLP | None = None
    if checkpoint_exists(artifacts / "teacher"):
        teacher, _ = load_checkpoint(artifacts / "teacher")
    _WORKER.update(
        pi0_state=pi0.state_dict(),
        shared=finetune_data(data, pi0, reference, teacher),
        config=finetune_config,
        runs_dir=runs_dir,
    )


def run_one(spec: RunSpec) -> dict:
    """One fine-tuning run in a worker; its record is written to ``runs/<run_id>.json`` before returning."""
    _, record = finetune(spec, _WORKER["pi0_state"], _WORKER["shared"], _WORKER["config"])
    write_json_atomically(_WORKER["runs_dir"] / f"{spec.run_id}.json", record)
    return record


def run_sweep(
    specs: list[RunSpec], initargs: tuple, runs_dir: Path, workers: int, run_dir: RunDir, progress: bool = True
) -> list[dict]:
    """Run every spec without a result file, ``workers`` processes at a time, with a progress bar; return
    the records of all specs (finished earlier or now), in ``specs`` order."""
    from tqdm import tqdm

    records = {spec.run_id: read_result(runs_dir / f"{spec.run_id}.json") for spec in specs}
    todo = [spec for spec in specs if records[spec.run_id] is None]
    # Longest runs first, so that no worker is left with a long run at the end.
    todo.sort(key=lambda spec: -spec.epochs)
    finished = len(specs) - len(todo)
    if finished:
        print(
            f"[parity] resuming: {finished} of {len(specs)} runs already finished, {len(todo)} to go",
            flush=True,
        )
    workers = max(1, min(workers, len(todo)))

    with tqdm(
        total=len(specs), initial=finished, desc="parity runs", unit="run", file=sys.stderr, mininterval=1.0,
        disable=not progress,
    ) as bar:

        def done(record: dict) -> None:
            records[record["run_id"]] = record
            final = record["final"]
            run_dir.log(
                run_id=record["run_id"],
                method=record["method"],
                lr=record["lr"],
                epochs=record["epochs"],
                schedule=record["schedule"],
                seconds=round(record["seconds"], 2),
                **{
                    k: final[k]
                    for k in ("new_task_accuracy", "old_task_accuracy", "forgetting", "forward_kl_new")
                },
            )
            bar.update(1)

        if not todo:
            pass
        elif workers == 1:
            threads = torch.get_num_threads()
            try:
                init_worker(*initargs)
                for spec in todo:
                    done(run_one(spec))
            finally:
                torch.set_num_threads(threads)
        else:
            # spawned processes or Ray tasks (vla_cl.workers), never forked: a forked child of a process
            # that already ran torch can deadlock in OpenMP.
            from vla_cl.workers import pool as worker_pool

            pool = worker_pool(workers, initializer=init_worker, initargs=initargs)
            try:
                futures = [pool.submit(run_one, spec) for spec in todo]
                for future in as_completed(futures):
                    done(future.result())
            except BaseException:
                # Ctrl-C or a failed run: drop the queued runs instead of waiting for all of them.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    return [records[spec.run_id] for spec in specs]


def resolve_workers(config: SweepConfig) -> int:
    return config.workers or available_cpus()
