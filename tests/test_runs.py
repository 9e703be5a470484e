"""Run directories: config, metrics as JSON lines, artifacts, and refusal to overwrite another run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_cl.runs import RunDir, RunDirConflict


@dataclasses.dataclass
class Cfg:
    out_dir: str
    lr: float = 1e-3


def test_metrics_are_json_lines_with_nan_as_null(tmp_path):
    run = RunDir.open(tmp_path / "r", "demo", Cfg(str(tmp_path / "r")))
    run.log(step=1, loss=np.float32(0.5), bad=float("nan"))
    run.log(step=2, loss=0.25)
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == pytest.approx(0.5) and rows[0]["bad"] is None
    assert run.read_metrics() == rows


def test_same_config_continues_and_different_config_is_refused(tmp_path):
    path = tmp_path / "r"
    run = RunDir.open(path, "demo", Cfg(str(path)))
    run.log(step=1)
    again = RunDir.open(path, "demo", Cfg(str(path)))
    assert len(again.read_metrics()) == 1, "continuing a run keeps its metrics"
    with pytest.raises(RunDirConflict, match="lr"):
        RunDir.open(path, "demo", Cfg(str(path), lr=0.1))
    with pytest.raises(RunDirConflict, match="command"):
        RunDir.open(path, "other", Cfg(str(path)))


def test_artifact_paths_create_parents(tmp_path):
    run = RunDir.open(tmp_path / "r", "demo", Cfg(str(tmp_path / "r")))
    target = run.artifact("plots/a.png")
    assert target.parent.is_dir() and target.parent.parent == run.artifacts


@dataclasses.dataclass
class ExecCfg:
    out_dir: str
    workers: int = dataclasses.field(default=2, metadata={"affects_results": False})
    lr: float = 1e-3


def test_execution_only_keys_may_change_on_resume(tmp_path):
    path = tmp_path / "r"
    RunDir.open(path, "demo", ExecCfg(str(path), workers=2))
    RunDir.open(path, "demo", ExecCfg(str(path), workers=8))
    with pytest.raises(RunDirConflict, match="lr"):
        RunDir.open(path, "demo", ExecCfg(str(path), workers=8, lr=0.5))
