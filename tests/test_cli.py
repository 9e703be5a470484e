"""The ``vla-cl`` entry point: subcommand listing, exit status 2 on bad input, run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vla_cl.cli import main
from vla_cl.cli.registry import COMMANDS


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_console_script_help_runs_in_a_fresh_process():
    exe = Path(sys.executable).parent / "vla-cl"
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "vla_cl.cli", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "sim-check" in proc.stdout and "razor" in proc.stdout


def test_no_arguments_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: vla-cl" in capsys.readouterr().out


def test_unknown_subcommand_exits_2_and_names_valid_ones(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    for name in COMMANDS:
        assert name in err


def test_unknown_config_key_exits_2_and_lists_valid_keys(tmp_path, capsys):
    assert main(["info", f"out_dir={tmp_path / 'r'}", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'colour'" in err
    assert "out_dir" in err and "seed" in err
    assert not (tmp_path / "r").exists(), "a refused run must not create its run directory"


def test_unknown_nested_or_plus_key_is_refused(capsys):
    assert main(["sim-check", "+extra.key=1"]) == 2
    assert "unknown config key 'extra.key'" in capsys.readouterr().err


def test_value_of_wrong_type_exits_2(capsys):
    assert main(["sim-check", "steps=many"]) == 2
    err = capsys.readouterr().err
    assert "steps" in err


def test_invalid_value_names_the_field_and_allowed_values(capsys):
    assert main(["sim-check", "image_size=4"]) == 2
    err = capsys.readouterr().err
    assert "image_size" in err and "16..1024" in err


def test_override_without_equals_is_refused(capsys):
    assert main(["info", "seed"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_command_help_lists_keys_with_defaults(capsys):
    assert main(["sim-check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "env_id" in out and "PickCube-v1" in out and "out_dir" in out


def test_run_directory_has_config_meta_and_metrics(tmp_path):
    out = tmp_path / "run"
    assert main(["info", f"out_dir={out}", "seed=3"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 3 and config["out_dir"] == str(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"] == "info"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and "torch_threads" in lines[0]
    assert (out / "artifacts").is_dir()
    assert json.loads((out / "info.json").read_text())["versions"]["torch"]


def test_out_dir_with_a_different_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["info", f"out_dir={out}", "seed=1"]) == 0
    before = (out / "config.yaml").read_text()
    assert main(["info", f"out_dir={out}", "seed=2"]) == 2
    assert "different config" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before


@pytest.mark.sim
def test_sim_check_command_writes_frames(tmp_path, needs_sim):
    out = tmp_path / "sim"
    assert main(["sim-check", f"out_dir={out}", "steps=4", "frames=2"]) == 0
    assert (out / "artifacts" / "frames.png").stat().st_size > 100
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["blank_frames"] == 0 and record["frame_shape"] == [64, 64, 3]
