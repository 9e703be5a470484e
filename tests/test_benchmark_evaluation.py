"""Smoke run of ``benchmarks/evaluation.py --quick``: the benchmark keeps working as the code changes."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "evaluation.py"


@pytest.mark.sim
def test_quick_evaluation_benchmark_prints_both_tables(capsys):
    spec = importlib.util.spec_from_file_location("benchmark_evaluation", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "1. evaluation vs the bare env" in out and "2. worker processes" in out
    assert "identical results with 1 and 2 workers: True" in out
