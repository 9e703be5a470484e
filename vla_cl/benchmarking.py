"""Small helpers the scripts in ``benchmarks/`` share: clocks, best-of-N timing and table printing.

Benchmarks time this process's CPU time by default: on shared cores other jobs inflate wall-clock
times erratically, while CPU time only counts the work this process did (``--clock wall`` switches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def best_time(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.process_time, warmup: bool = False
) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    print(f"\n{title}\n{line(header)}\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
