"""Smoke run of ``benchmarks/scale.py --quick``: Ray tasks and the process pool side by side, env workers giving
the in-process episodes, weight syncs and the projection."""

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
    table3 = done.stdout.split("3. collection throughput")[1].split("4. weight sync")[0]
    assert table3.count("| True ") == 4 and "2 env workers + inference worker" in table3
    assert "sent per sync MB" in done.stdout and "5. projection on paper" in done.stdout
