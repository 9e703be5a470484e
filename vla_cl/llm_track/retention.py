"""How much general ability a fine-tuned language model keeps: HellaSwag, MMLU and TruthfulQA (MC2) through
EleutherAI lm-eval.

Two sources. ``source="hub"`` runs the real lm-eval tasks by name (they download their data from the
Hugging Face hub). ``source="local"`` runs small hand-written STAND-INS (``data/retention/``) for machines
without the hub (CI, offline clusters): no package ships the real benchmarks. A stand-in task includes
lm-eval's own task file (``include:``) and swaps only the data, so prompt, choices and metric code are the
real task's; its score still says nothing about the real benchmark, and every result carries ``stand_in``
and a ``label`` saying which it is.

Each result keeps the per-example outcomes (0/1 accuracy, or the MC2 probability mass on true answers) keyed
by a document id that is the same for every model, so two models can be compared item by item (paired
bootstrap).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_cl.errors import UserError

DATA_DIR = Path(__file__).resolve().parent / "data" / "retention"
SOURCES = ("local", "hub")
STANDIN_TAG = "vla_cl_standin"
_FILTER = "none"  # lm-eval's key suffix for unfiltered metrics ("acc,none")


@dataclass(frozen=True)
class Benchmark:
    """One retention benchmark: the real lm-eval task, its local stand-in, and the metric that is its score."""

    name: str  # registry key
    title: str  # display name
    hub_task: str  # lm-eval task (or group) run with source="hub"
    builtin_yaml: str  # lm-eval's task file, relative to lm_eval/tasks/, that the stand-in task includes
    data_file: str  # the stand-in's JSONL under data/retention/
    metric: str = "acc"  # the score; for truthfulqa_mc2 lm-eval calls the MC2 value "acc"
    also_report: tuple[str, ...] = ()  # further metrics copied into BenchmarkResult.other_metrics
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)  # extra keys of the stand-in YAML

    @property
    def local_task(self) -> str:
        return f"vla_cl_standin_{self.name}"

    @property
    def data_path(self) -> Path:
        return DATA_DIR / self.data_file


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("hellaswag", "HellaSwag", "hellaswag", "hellaswag/hellaswag.yaml", "hellaswag.jsonl",
              also_report=("acc_norm",)),
    # The real mmlu is a group of 57 subject tasks; the stand-in is one task whose description names each
    # document's subject, as every subject task's description does.
    Benchmark("mmlu", "MMLU", "mmlu", "mmlu/default/_default_template_yaml", "mmlu.jsonl",
              overrides={"description": "The following are multiple choice questions (with answers) about "
                                        "{{subject.replace('_', ' ')}}.\n\n"}),
    Benchmark("truthfulqa_mc2", "TruthfulQA MC2", "truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml",
              "truthfulqa_mc2.jsonl"),
)}


class HubUnavailable(UserError):
    """The real benchmarks were asked for but the Hugging Face hub cannot be reached."""


@dataclass
class BenchmarkResult:
    """One benchmark's score for one model, with the per-example outcomes it averages."""

    benchmark: str  # registry name ("hellaswag")
    task: str  # the lm-eval task actually run ("hellaswag" or "vla_cl_standin_hellaswag")
    stand_in: bool  # True: the project's stand-in data, not the real benchmark
    label: str  # what to print next to the number, e.g. "HellaSwag (stand-in, 48 items)"
    metric: str  # "acc"
    score: float  # mean of per_example
    stderr: float | None  # lm-eval's standard error of the score (None when it gives none)
    n: int  # documents evaluated
    per_example: dict[str, float]  # document id -> outcome; ids are the same for every model
    other_metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"acc_norm": 0.31}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_local_tasks(folder: Path, benchmarks: Sequence[str] | None = None) -> list[str]:
    """Write lm-eval task YAMLs for the stand-ins (all of them unless ``benchmarks`` names some) into
    ``folder`` and return their task names. Pass the folder as ``TaskManager(include_path=folder)``.

    Data paths are absolute: lm-eval resolves relative ``data_files`` against the working directory.
    """
    import yaml

    chosen = [_benchmark(name) for name in (BENCHMARKS if benchmarks is None else benchmarks)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tasks_root = _lm_eval_tasks_root()
    names = []
    for bench in chosen:
        builtin = tasks_root / bench.builtin_yaml
        if not builtin.is_file():
            raise RuntimeError(f"lm-eval has no {builtin}: the stand-in {bench.local_task} reuses that task "
                               "definition; install a lm-eval 0.4.x that ships it")
        if not bench.data_path.is_file():
            raise FileNotFoundError(f"the {bench.title} stand-in data {bench.data_path} is missing; reinstall vla_cl")
        config = {
            "include": str(builtin),
            "task": bench.local_task,
            # Our own tag: keeping the included one (e.g. "multiple_choice") would make this folder's tag
            # entry replace lm-eval's built-in tag of the same name.
            "tag": [STANDIN_TAG],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(bench.data_path.resolve())}},
            "training_split": None,
            "validation_split": None,
            "test_split": "test",
            "fewshot_split": None,
            **bench.overrides,
            "metadata": {"version": 1.0, "stand_in_for": bench.hub_task},
        }
        text = (f"# Stand-in for lm-eval's {bench.hub_task}: the project's own {bench.data_file}, NOT the real "
                "benchmark.\n# Written by vla_cl.llm_track.retention.write_local_tasks; regenerated on every run.\n")
        (folder / f"{bench.local_task}.yaml").write_text(text + yaml.safe_dump(config, sort_keys=False))
        names.append(bench.local_task)
    return names


def evaluate_retention(model: Any, tokenizer: Any, benchmarks: Sequence[str], *, source: str = "local",
                       limit: int | None = None, batch_size: int = 8,
                       work_dir: Path) -> dict[str, BenchmarkResult]:
    """Score an in-memory causal LM (a transformers model, or one wrapped by peft) on ``benchmarks``
    through lm-eval, zero-shot as lm-eval's tasks define them.

    ``source="local"`` runs the stand-ins (task YAMLs written to ``work_dir/lm_eval_tasks``) with the hub
    switched off; ``source="hub"`` runs the real tasks and fails at once, naming the alternative, when the
    hub cannot be reached. ``limit`` evaluates only the first ``limit`` documents of each task. The model's
    train/eval mode is restored afterwards, and no global random state is reseeded.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    chosen = [_benchmark(name) for name in dict.fromkeys(benchmarks)]
    if not chosen:
        raise ValueError(f"benchmarks is empty; choose from {sorted(BENCHMARKS)}")
    stand_in = source == "local"
    if stand_in:
        folder = Path(work_dir) / "lm_eval_tasks"
        tasks = write_local_tasks(folder, [b.name for b in chosen])
    else:
        tasks = [b.hub_task for b in chosen]
        _require_hub(tasks)

    was_training = model.training
    try:
        with _quiet_lm_eval(), (_hub_off() if stand_in else contextlib.nullcontext()):
            from lm_eval import evaluator
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager

            # Stand-ins include lm-eval's task files by path, so the built-in index is not needed.
            manager = TaskManager(include_path=str(folder), include_defaults=False) if stand_in else TaskManager()
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            # Scoring multiple choice is deterministic, so no seeds: reseeding would reset the caller's
            # (a training loop's) random streams.
            with _no_progress_bars():
                output = evaluator.simple_evaluate(
                    model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
                    random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    finally:
        model.train(was_training)
    return {b.name: _result(b, output, stand_in, limit) for b in chosen}


def _benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown retention benchmark {name!r}; choose from {sorted(BENCHMARKS)}") from None


def _lm_eval_tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _require_hub(tasks: list[str]) -> None:
    """Fail in seconds rather than after datasets' retries when the real benchmarks cannot be downloaded."""
    from vla_cl.hub import hub_unreachable

    reason = hub_unreachable()
    if reason:
        raise HubUnavailable(
            f"cannot run the lm-eval task(s) {', '.join(tasks)}: their data comes from the Hugging Face hub, "
            f"which is not reachable ({reason}). Use source='local' for the project's small stand-ins "
            "(not comparable to published scores), or run where the hub is reachable.")


@contextlib.contextmanager
def _hub_off() -> Iterator[None]:
    """Offline mode for the duration of a stand-in evaluation, then as it was.

    Even local JSON files make ``datasets`` send a download-count request to S3 (3 s timeout) unless it is
    offline. Both libraries read the variables once, at import, so they are imported first (the variables
    must not stay frozen on for the rest of the process) and their flags are switched as well.
    """
    import datasets.config
    import huggingface_hub.constants

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved_flags = [getattr(module, name) for module, name in flags]
    os.environ.update(dict.fromkeys(names, "1"))
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, saved_flags):
            setattr(module, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _DropExpected(logging.Filter):
    """HFLM warns that it was handed a ready model; that is how this module uses it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("`pretrained` model kwarg is not of type `str`",
                                               "Passed an already-initialized model through `pretrained`"))


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """lm-eval's tqdm bars (building requests, tokenizing, scoring) off for the duration of one evaluation.

    lm-eval passes ``disable=False`` explicitly where it has the option at all (so ``TQDM_DISABLE`` cannot
    win) and offers none for the request-building bar, so each lm_eval module's own ``tqdm`` name is swapped
    for one that is always disabled, and put back afterwards; our own bars (another module's) are untouched."""
    import sys

    from tqdm import tqdm

    def disabled(*args: Any, **kwargs: Any) -> tqdm:
        return tqdm(*args, **{**kwargs, "disable": True})

    modules = [m for name, m in list(sys.modules.items())
               if (name == "lm_eval" or name.startswith("lm_eval.")) and getattr(m, "tqdm", None) is tqdm]
    for module in modules:
        module.tqdm = disabled
    try:
        yield
    finally:
        for module in modules:
            module.tqdm = tqdm


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO; keep warnings and errors only, for the duration of one evaluation."""
    root = logging.getLogger("lm_eval")
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    drop = _DropExpected()
    level = root.level
    root.setLevel(logging.WARNING)
    hf_logger.addFilter(drop)
    bars = None
    with contextlib.suppress(ImportError):
        import datasets

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        root.setLevel(level)
        hf_logger.removeFilter(drop)
        if bars:
            datasets.enable_progress_bars()


def _leaf_tasks(name: str, group_subtasks: Mapping[str, list[str]]) -> list[str]:
    """The tasks that produced samples for ``name``: itself, or for a group (mmlu) its subtasks, recursively."""
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaf_tasks(child, group_subtasks)]


def _result(bench: Benchmark, output: Mapping[str, Any], stand_in: bool, limit: int | None) -> BenchmarkResult:
    task = bench.local_task if stand_in else bench.hub_task
    row = output["results"][task]
    per_example: dict[str, float] = {}
    for leaf in _leaf_tasks(task, output.get("group_subtasks", {})):
        for sample in output["samples"].get(leaf, []):
            # Stand-in items carry their own id; the real datasets do not, so their position in the task's
            # test set names them (the same for every model evaluated with the same lm-eval version).
            key = str(sample["doc"]["id"]) if stand_in else f"{leaf}/{sample['doc_id']}"
            if key in per_example:
                raise ValueError(f"{task}: two documents share the id {key!r}; ids must be unique")
            per_example[key] = float(sample[bench.metric])
    n = len(per_example)
    if stand_in:
        total = sum(1 for line in bench.data_path.read_text().splitlines() if line.strip())
        label = f"{bench.title} (stand-in, {n} items)" if n == total else f"{bench.title} (stand-in, {n} of {total} items)"
    else:
        label = f"{bench.title} (lm-eval {task}" + (f", first {limit} docs per task)" if limit else ")")
    stderr = row.get(f"{bench.metric}_stderr,{_FILTER}")
    return BenchmarkResult(
        benchmark=bench.name, task=task, stand_in=stand_in, label=label, metric=bench.metric,
        score=float(row[f"{bench.metric},{_FILTER}"]),
        stderr=float(stderr) if isinstance(stderr, numbers.Real) else None, n=n, per_example=per_example,
        other_metrics={m: float(row[f"{m},{_FILTER}"]) for m in bench.also_report if f"{m},{_FILTER}" in row})
