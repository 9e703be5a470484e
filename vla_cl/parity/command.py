"""``vla-cl parity``: the ParityMNIST mechanism track, the forgetting law and the predictor table in minutes.

    vla-cl parity preset=quick            # >= 40 fine-tuning runs, a few minutes on 2 CPU cores
    vla-cl parity preset=paper            # the paper-sized sweep
    vla-cl parity preset=quick sweep.workers=8 out_dir=runs/parity-q

Writes into the run directory: ``summary.json`` (per-run outcomes and predictors, the R^2 of every
predictor, forgetting at matched new-task accuracy), ``report.md``, and under ``artifacts/`` the plots
``forgetting_vs_kl.png``, ``pareto.png`` and ``r2_predictors.png``, the pi0 and teacher checkpoints and
``runs/<run_id>.json`` (one per finished run). Re-running the same command in the same ``out_dir`` resumes.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from vla_cl.config import RunConfig
from vla_cl.parity.data import DataConfig
from vla_cl.parity.sweep import SweepConfig
from vla_cl.parity.train import FinetuneConfig, PretrainConfig
from vla_cl.runs import RunDir


@dataclasses.dataclass
class ParityConfig(RunConfig):
    """The whole experiment: one typed group per component (each validates its own fields)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig, metadata={"help": "datasets and splits"})
    pretrain: PretrainConfig = dataclasses.field(
        default_factory=PretrainConfig, metadata={"help": "training pi0"}
    )
    finetune: FinetuneConfig = dataclasses.field(
        default_factory=FinetuneConfig, metadata={"help": "every run"}
    )
    sweep: SweepConfig = dataclasses.field(
        default_factory=SweepConfig, metadata={"help": "the grid and workers"}
    )


def run(config: ParityConfig, run_dir: RunDir) -> int:
    from vla_cl.parity import report
    from vla_cl.parity.data import make_splits
    from vla_cl.parity.sweep import prepare, resolve_workers, run_specs, run_sweep, write_json_atomically

    started = time.perf_counter()
    try:
        data = make_splits(config.data, config.seed)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"[parity] cannot load the data: {exc}", file=sys.stderr)
        return 1
    print(
        f"[parity] new task: {data.sources['new_task']}\n[parity] old task: {data.sources['old_task']}",
        flush=True,
    )
    prepared = prepare(
        data, config.pretrain, config.finetune, list(config.sweep.methods), config.seed, run_dir.artifacts
    )
    print(
        f"[parity] pi0: new-task accuracy {prepared.pi0['new_task_accuracy']:.3f}, "
        f"old-task accuracy {prepared.pi0['old_task_accuracy']:.3f}",
        flush=True,
    )

    specs = run_specs(config.sweep, config.seed)
    runs_dir = run_dir.artifacts / "runs"
    workers = resolve_workers(config.sweep)
    print(
        f"[parity] {len(specs)} fine-tuning runs on {min(workers, len(specs))} worker process(es)", flush=True
    )
    initargs = (config.data, config.finetune, config.seed, run_dir.artifacts, runs_dir)
    records = run_sweep(specs, initargs, runs_dir, workers, run_dir, progress=config.sweep.progress)

    summary = report.summarize(
        records,
        prepared.pi0,
        prepared.teacher,
        prepared.sources,
        config.finetune,
        config.data.n_test,
        time.perf_counter() - started,
    )
    write_json_atomically(run_dir.path / "summary.json", summary)
    (run_dir.path / "report.md").write_text(report.markdown(summary))
    plots = report.write_plots(summary, records, run_dir.artifacts)
    run_dir.log(event="summary", n_runs=len(records), **{f"r2_{k}": v for k, v in summary["r2"].items()})

    print("\n" + report.markdown(summary))
    print(f"[parity] summary: {run_dir.path / 'summary.json'}; plots: {', '.join(p.name for p in plots)}")
    return 0
