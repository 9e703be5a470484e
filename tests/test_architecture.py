"""The layers of the package hold: import-linter's contracts (``[tool.importlinter]`` in pyproject.toml) are kept
by the real tree, and broken by a deliberately wrong-way import added to a copy of it.

The copy is what proves the check has teeth: each case adds one import that the README's architecture forbids
(inside a function, as a lazy import would be) and expects the check to fail naming that import. The linter
runs in a subprocess whose working directory holds the package it checks, so the copy, not the installed tree,
is what it reads; offline, about a second per run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra: run `make setup`")

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    """import-linter on the ``vla_cl`` package under ``where``, with ``where/pyproject.toml``'s contracts."""
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "PYTHONPATH": str(where)}  # no wrapped lines
    return subprocess.run([sys.executable, "-c", LINT], cwd=where, env=env, capture_output=True, text=True, check=False,
                          timeout=120)


def contract_names() -> list[str]:
    """The contracts' names as pyproject.toml gives them (read as text: tomllib is Python 3.11+)."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    start = lines.index("[tool.importlinter]")
    return [line.split("=", 1)[1].strip().strip('"') for line in lines[start:] if line.startswith("name = ")]


def statuses(out: str) -> dict[str, str]:
    """Each contract's verdict in the linter's report, KEPT or BROKEN (KeyError for one it does not report)."""
    return {name: next(v for v in ("KEPT", "BROKEN") if f"{name} {v}" in out) for name in contract_names()}


@pytest.fixture(scope="module")
def real_tree() -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    result = lint_imports(ROOT)
    return result, statuses(result.stdout + result.stderr)


def test_the_package_keeps_every_import_contract(real_tree):
    result, verdicts = real_tree
    assert len(verdicts) >= 4, verdicts  # layers, the two tracks, no cycles
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(verdicts.values()) == {"KEPT"}
    assert f"Contracts: {len(verdicts)} kept, 0 broken." in result.stdout


LAYERS = "Layers: a module imports only from the layers below its own"
LLM_TRACK = "The language-model track uses the law and the KL code, never the robot stack"
NO_CYCLES = "No circles: within each package, its modules and subpackages import one another one way"

# Each case: the module that gains an import, the import (a statement inside a function), the contracts that
# must break (every other one still holds), and what the report must name.
WRONG_WAY = {
    # rendering a policy from envs/video.py: envs sit below policies (how the tree was before issue 19)
    "envs imports policies": ("vla_cl/envs/video.py", "from vla_cl.policies.registry import load_policy",
                              {LAYERS}, "vla_cl.envs.video -> vla_cl.policies.registry"),
    # a foundation reaching up into evaluation, which imports it: wrong way, and a circle
    "a foundation imports evaluation": ("vla_cl/stats.py", "from vla_cl.evaluation.results import SuiteResult",
                                        {LAYERS, NO_CYCLES}, "vla_cl.stats -> vla_cl.evaluation.results"),
    # the language-model track borrowing robot code (as it once did for the hub check)
    "llm_track imports a policy": ("vla_cl/llm_track/models.py",
                                   "from vla_cl.policies.openvla.checkpoint import resolve_checkpoint",
                                   {LLM_TRACK}, "vla_cl.llm_track.models -> vla_cl.policies.openvla.checkpoint"),
    # the checkpoint format looking policies up by name again: policies/checkpoint.py <-> registry.py
    "a circle in policies": ("vla_cl/policies/checkpoint.py", "from vla_cl.policies.registry import get_policy_class",
                             {NO_CYCLES}, "No cycles are allowed in vla_cl.policies."),
}


@pytest.mark.parametrize("case", sorted(WRONG_WAY))
def test_a_wrong_way_import_breaks_the_contract(case, tmp_path, real_tree):
    module, statement, broken, named = WRONG_WAY[case]
    shutil.copytree(ROOT / "vla_cl", tmp_path / "vla_cl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _wrong_way():\n    {statement}\n\n    return None\n")

    result = lint_imports(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    # The import breaks what it should and nothing else: the copy's verdicts are the real tree's (all kept,
    # unless the test above fails too) but for those contracts.
    expected = {name: "BROKEN" if name in broken else verdict for name, verdict in real_tree[1].items()}
    assert broken <= set(expected) and statuses(out) == expected, out
    assert named in out, out
