"""Measuring what a fine-tuned robot policy kept and how it generalises.

``suite``: evaluation suites as typed configs (``configs/suite/*.yaml``) and the generalisation axes.
``evaluate``: runs a policy on a suite (``evaluate``, ``Evaluator``). ``results``: per task and axis,
every episode and the success rate with its Wilson interval. ``retention``: forgetting between two
results, with paired intervals. ``continual``: continual-learning metrics on a task x stage matrix.
``render``: ``vla-cl render``, rollout videos of a policy. The intervals are ``vla_cl.stats``'.

Names are exported lazily, so ``import vla_cl.evaluation`` imports neither torch nor the simulator.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SuiteConfig": "vla_cl.evaluation.suite",
    "SuiteTask": "vla_cl.evaluation.suite",
    "AXES": "vla_cl.evaluation.suite",
    "load_suite": "vla_cl.evaluation.suite",
    "list_suites": "vla_cl.evaluation.suite",
    "evaluate": "vla_cl.evaluation.runner",
    "Evaluator": "vla_cl.evaluation.runner",
    "SuiteResult": "vla_cl.evaluation.results",
    "CellResult": "vla_cl.evaluation.results",
    "read_result": "vla_cl.evaluation.results",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla_cl.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
