"""Resumable stages of a long job: each runs in its own sub-folder of the run directory and records
``stage.json`` when it finishes, so that running the job again reuses what finished and redoes the rest.
Used by ``vla-cl razor`` and ``vla-cl llm``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vla_cl.files import write_json_atomic
from vla_cl.runs import RunDir

STAGE_FILE = "stage.json"


def log(message: str) -> None:
    print(message, flush=True)


class Stages:
    """Runs named stages in sub-folders; a finished stage's result is read back instead of recomputed."""

    def __init__(self, run_dir: RunDir, prefix: str = "razor"):
        self.run_dir, self.timings, self.prefix = run_dir, [], prefix

    def __call__(self, name: str, what: str, fn: Callable[[Path], Any]) -> Any:
        self.run_dir.begin()  # the stages write into sub-folders: the run has started
        folder = self.run_dir.path / name
        marker = folder / STAGE_FILE
        index = len(self.timings) + 1
        if marker.exists():
            record = json.loads(marker.read_text())
            log(f"[{self.prefix}] stage {index} {name}: finished in an earlier run ({record['seconds']:.0f} s), reused")
            self.timings.append((name, record["seconds"], "reused"))
            return record["result"]
        log(f"[{self.prefix}] stage {index} {name}: {what}")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = fn(folder)
        seconds = time.perf_counter() - start
        write_json_atomic(marker, {"seconds": round(seconds, 2), "result": result})
        self.run_dir.log(event="stage", stage=name, seconds=round(seconds, 2))
        self.timings.append((name, seconds, "ran"))
        log(f"[{self.prefix}]   {name} done in {seconds:.0f} s")
        return result

    def finish(self, statement: str, report: Path) -> None:
        """Write ``timings.json`` and print the timing table, the finding and where the report is."""
        write_json_atomic(self.run_dir.path / "timings.json", [{"stage": n, "seconds": round(s, 2), "status": st}
                                                               for n, s, st in self.timings])
        log(f"\n[{self.prefix}] stage timings\n" + self.table())
        log(f"\n[{self.prefix}] {statement}")
        log(f"[{self.prefix}] report: {report}")

    def table(self) -> str:
        total = sum(seconds for _, seconds, status in self.timings if status == "ran")
        width = max(len("total (this run)"), *(len(name) for name, _, _ in self.timings))
        lines = [f"| {'stage'.ljust(width)} | seconds | this run |", f"|{'-' * (width + 2)}|---------|----------|"]
        lines += [f"| {name.ljust(width)} | {seconds:7.1f} | {status:8} |" for name, seconds, status in self.timings]
        lines.append(f"| {'total (this run)'.ljust(width)} | {total:7.1f} |          |")
        return "\n".join(lines)


def resolve_workers(workers: int) -> int:
    """A worker-process count: ``workers``, or one per core this process may use when it is 0."""
    return workers or max(1, len(os.sched_getaffinity(0)))
