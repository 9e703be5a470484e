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
    RunDir.open(path, "demo", ExecCfg(str(path), workers=2)).begin()
    RunDir.open(path, "demo", ExecCfg(str(path), workers=8)).begin()
    with pytest.raises(RunDirConflict, match="lr"):
        RunDir.open(path, "demo", ExecCfg(str(path), workers=8, lr=0.5))


# ------------------------------------------------------------------------------------------ trust


def test_opening_writes_nothing_and_a_failed_start_leaves_the_folder_as_it_was(tmp_path):
    path = tmp_path / "r"
    RunDir.open(path, "demo", Cfg(str(path)))  # checked, not started: e.g. a bad checkpoint is found next
    assert not path.exists()
    again = RunDir.open(path, "demo", Cfg(str(path), lr=0.5))  # the corrected value is accepted
    again.log(step=1)
    assert (path / "config.yaml").exists() and "lr: 0.5" in (path / "config.yaml").read_text()


def test_meta_keeps_the_first_start_and_appends_each_resume(tmp_path):
    path = tmp_path / "r"
    first = RunDir.open(path, "demo", Cfg(str(path)), argv=["vla-cl", "demo", "a"]).begin()
    first.close()
    started = json.loads((path / "meta.json").read_text())["started"]
    for k in range(2):
        RunDir.open(path, "demo", Cfg(str(path)), argv=["vla-cl", "demo", f"resume{k}"]).begin().close()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["started"] == started and meta["argv"][-1] == "a"
    assert [r["argv"][-1] for r in meta["resumes"]] == ["resume0", "resume1"]


def test_a_second_live_process_is_refused_and_a_stale_lock_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from vla_cl.errors import RunLocked

    path = tmp_path / "r"
    path.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            RunDir.open(path, "demo", Cfg(str(path)))
    finally:
        holder.kill()
        holder.wait()
    run = RunDir.open(path, "demo", Cfg(str(path))).begin()  # the holder is gone: a stale lock
    assert json.loads((path / ".lock").read_text())["pid"] == os.getpid()
    run.close()
    assert not (path / ".lock").exists()


def test_bad_places_and_a_corrupt_config_are_refused_by_name(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunDirConflict, match="is a file"):
        RunDir.open(file, "demo", Cfg(str(file)))
    with pytest.raises(RunDirConflict, match="is a file"):
        RunDir.open(file / "sub", "demo", Cfg(str(file / "sub")))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root writes anywhere; the check is for everyone else
            with pytest.raises(RunDirConflict, match="cannot be written"):
                RunDir.open(locked / "run", "demo", Cfg(str(locked / "run")))
    finally:
        locked.chmod(0o700)
    path = tmp_path / "r"
    RunDir.open(path, "demo", Cfg(str(path))).begin().close()
    (path / "config.yaml").write_text("lr: [unclosed")
    with pytest.raises(RunDirConflict, match="corrupt"):
        RunDir.open(path, "demo", Cfg(str(path)))


def test_a_torn_last_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "r"
    run = RunDir.open(path, "demo", Cfg(str(path)))
    run.log(step=1)
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 2, "lo')
    assert run.read_metrics()[-1]["step"] == 1


def test_a_writer_killed_mid_file_leaves_the_old_content_and_the_next_start_sweeps_its_temporary(tmp_path):
    """vla_cl.files: the new content goes to a hidden temporary and replaces the file only when complete."""
    from vla_cl.files import atomic_path, remove_stale_temporaries, write_text_atomic

    target = tmp_path / "summary.json"
    write_text_atomic(target, '{"old": 1}')
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"new": ')  # half of it, then the writer dies
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1} and not list(tmp_path.glob(".*"))
    left = tmp_path / "artifacts" / ".model.safetensors.123.tmp"  # what a SIGKILL would leave
    left.parent.mkdir()
    left.write_text("partial")
    assert remove_stale_temporaries(tmp_path) == [left] and not left.exists()
