"""Smoke run of ``benchmarks/scale.py --quick``: Ray tasks and the process pool side by side, same episodes."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"

pytest.importorskip("ray")


@pytest.mark.sim
def test_quick_scale_benchmark_prints_both_tables_with_identical_results():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "results identical: True" in done.stdout and "2. a sweep of short PPO trials" in done.stdout
    assert "| ray " in done.stdout and "| process " in done.stdout
