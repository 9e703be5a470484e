"""Smoke run of ``benchmarks/kl.py --quick``: the benchmark keeps working as the code changes."""

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "kl.py"


def test_quick_benchmark_prints_its_three_tables(capsys):
    spec = importlib.util.spec_from_file_location("benchmark_kl", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for title in ("1. action_token_kl", "2. support choice", "3. KLProbe cost"):
        assert title in out
    assert "disable_adapter" in out and "LoRA" in out
