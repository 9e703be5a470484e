"""The ``vla-cl`` error boundary: a user's mistake is one paragraph and exit status 2, found before any run
folder is written; a crash is a traceback and exit 1; Ctrl-C is one line and exit 130."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vla_cl.cli import main

TINY_TRAIN = ["policy_preset=tiny", "task=maniskill/PushCube-v1", "iterations=1"]


def refused(capsys, command: str, *args: str) -> str:
    """Run ``vla-cl command args``; assert exit 2 and a one-paragraph message without a traceback."""
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vla-cl {command}: "), err
    assert "Traceback" not in err and "\n\n" not in err, err
    return err


def refused_train(tmp_path: Path, capsys, *args: str) -> str:
    out_dir = tmp_path / "run"
    err = refused(capsys, "train", *TINY_TRAIN, f"out_dir={out_dir}", *args)
    assert not out_dir.exists(), "a refused run must not create its run folder"
    return err


def state_token_checkpoint(folder: Path) -> Path:
    from vla_cl.policies import make_policy
    from vla_cl.tokenizer import ActionTokenizer

    make_policy("state_token", tokenizer=ActionTokenizer(256, 256), state_dim=8,
                instructions=["push the cube"], hidden=[8]).save_pretrained(folder)
    return folder


def test_wrong_type_names_the_key_the_value_and_the_type(tmp_path, capsys):
    err = refused_train(tmp_path, capsys, "iterations=abc")
    assert "iterations" in err and "'abc'" in err and "int" in err


@pytest.mark.parametrize("override", ["updater.optim.lr=inf", "updater.optim.grad_clip=inf", "updater.kl_coef=nan"])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, capsys, override):
    err = refused_train(tmp_path, capsys, override)
    assert override.partition("=")[0] in err and "finite" in err


def test_negative_seed_is_refused(tmp_path, capsys):
    assert "seed" in refused_train(tmp_path, capsys, "seed=-1")


@pytest.mark.parametrize("command", ["info", "parity"])
def test_negative_seed_is_refused_for_commands_without_their_own_validation(tmp_path, capsys, command):
    assert "seed" in refused(capsys, command, f"out_dir={tmp_path / 'run'}", "seed=-1")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    err = refused_train(tmp_path, capsys, "device=cuda")
    assert "device=cuda" in err and "torch.cuda.is_available() is False" in err and "device=cpu" in err


def test_cuda_index_out_of_range_is_refused(tmp_path, capsys):
    err = refused_train(tmp_path, capsys, "device=cuda:99")
    assert "device=cuda:99" in err and ("is_available() is False" in err or "CUDA device" in err)


def test_a_gpu_preset_still_composes_on_a_cpu_machine():
    from vla_cl.cli.compose import compose
    from vla_cl.cli.registry import COMMANDS

    config = compose("train", COMMANDS["train"].load_schema(), [*TINY_TRAIN, "device=cuda:1"])
    assert config.device == "cuda:1"


def test_unknown_sim_check_env_id_names_valid_ids(tmp_path, capsys):
    err = refused(capsys, "sim-check", "env_id=nope", f"out_dir={tmp_path / 'run'}")
    assert "env_id" in err and "'nope'" in err and "PickCube-v1" in err
    assert not (tmp_path / "run").exists()


def test_corrupt_init_weights_are_reported_as_corrupt(tmp_path, capsys):
    folder = state_token_checkpoint(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = refused_train(tmp_path, capsys, f"init={folder}")
    assert "corrupt" in err and "model.safetensors" in err


def test_missing_init_folder_is_refused(tmp_path, capsys):
    err = refused_train(tmp_path, capsys, f"init={tmp_path / 'nowhere'}")
    assert "init" in err and "nowhere" in err and "does not exist" in err


def test_render_of_an_image_policy_with_state_observations_is_refused(tmp_path, capsys):
    from vla_cl.policies import get_policy_class, make_policy
    from vla_cl.tokenizer import ActionTokenizer

    config = {**get_policy_class("small_vlm").tiny_config(), "state_dim": 0,
              "instructions": ["push the cube"], "value_head": False}
    make_policy("small_vlm", tokenizer=ActionTokenizer(256, 256), **config).save_pretrained(tmp_path / "vlm")
    err = refused(capsys, "render", f"policy={tmp_path / 'vlm'}", "obs_mode=state",
                  f"out_dir={tmp_path / 'run'}")
    assert "obs_mode" in err and "obs_mode=rgb" in err and "obs_mode=both" in err


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["train", *TINY_TRAIN, f"out_dir={tmp_path / 'run'}", "--debug", "seed=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "vla-cl train: invalid value for seed" in err


def test_a_crash_prints_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch):
    def boom(config, run_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr("vla_cl.cli.info.run", boom)
    assert main(["info", f"out_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


def test_ctrl_c_exits_130_with_one_line_saying_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(config, run_dir):
        run_dir.log(step=1)  # the run had started: its folder and lock exist
        raise KeyboardInterrupt

    monkeypatch.setattr("vla_cl.cli.info.run", interrupted)
    out_dir = tmp_path / "run"
    assert main(["info", f"out_dir={out_dir}"]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "run the same command again" in err and str(out_dir) in err
    assert not (out_dir / ".lock").exists(), "the interrupted run's lock is released"
