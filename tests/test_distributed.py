"""The learner on several processes (vla_cl.updaters.distributed): two gloo processes give the gradients and the
update of one process on the whole batch, DDP for the CPU-scale policies and FSDP (LoRA, gradient checkpointing)
for the OpenVLA layout; a two-process `vla-cl train` under torchrun gives the one-process run's numbers, writes one
run folder, and resumes from its last checkpoint when restarted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "distributed_worker.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, free_port(), *args] if processes == 2 else [sys.executable, *args]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a)


@pytest.mark.parametrize(("policy", "strategy"), [("state_token", "ddp"), ("openvla", "fsdp")])
def test_two_processes_give_the_gradients_and_update_of_one_on_the_whole_batch(tmp_path, policy, strategy):
    for what in ("gradients", "step"):
        launch(str(WORKER), "single", str(tmp_path), policy, what, processes=1)
        launch(str(WORKER), strategy, str(tmp_path), policy, what)
        one = load_file(str(tmp_path / f"{policy}-{what}-single.safetensors"))
        two = load_file(str(tmp_path / f"{policy}-{what}-{strategy}.safetensors"))
        assert sum(float(t.abs().sum()) for t in one.values()) > 1.0  # gradients that say something
        assert relative_difference(one, two) < 1e-4, what
    if policy == "openvla":  # LoRA: the adapters are what trains, and they moved
        assert any("lora_" in name for name in one)


def test_processes_with_their_own_episodes_give_the_gradients_of_one_on_all_of_them(tmp_path):
    """learner.shard_episodes: each process's batch is its own (other seeds, another length); the summed gradient
    is that of one process on the concatenated batch."""
    launch(str(WORKER), "single", str(tmp_path), "state_token", "own-episodes", processes=1)
    launch(str(WORKER), "ddp", str(tmp_path), "state_token", "own-episodes")
    one = load_file(str(tmp_path / "state_token-own-episodes-single.safetensors"))
    two = load_file(str(tmp_path / "state_token-own-episodes-ddp.safetensors"))
    assert relative_difference(one, two) < 1e-4


def test_fsdp_with_gradient_checkpointing_and_bf16(tmp_path):
    launch(str(WORKER), "single", str(tmp_path), "openvla", "gradients", processes=1)
    launch(str(WORKER), "fsdp", str(tmp_path), "openvla", "gradients", "no", "1")
    launch(str(WORKER), "fsdp", str(tmp_path), "openvla", "gradients", "bf16", "1")
    one = load_file(str(tmp_path / "openvla-gradients-single.safetensors"))
    recomputed = load_file(str(tmp_path / "openvla-gradients-fsdp-no-gc1.safetensors"))
    low = load_file(str(tmp_path / "openvla-gradients-fsdp-bf16-gc1.safetensors"))
    assert relative_difference(one, recomputed) < 1e-4  # recomputing activations changes nothing
    assert all(bool(torch.isfinite(t).all()) for t in low.values())
    assert 0 < relative_difference(one, low) < 0.25  # bf16 parameters: close, not equal


TRAIN = ["-m", "vla_cl.cli", "train", "policy_preset=tiny", "updater=ppo", "updater.episodes=4", "num_envs=2",
         "eval_episodes=2", "probe_episodes=1", "progress=false", "reward=env", "checkpoint_every=1",
         "refresh_every=1", "task=maniskill/PickCube-v1", "max_episode_steps=20", "eval_greedy=true"]


def metrics(folder: Path) -> list[dict]:
    skip = ("time", "seconds", "samples_per_s", "train/explained_variance")  # (not a mean over rows)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in skip} for line in lines]


@pytest.mark.sim
def test_train_under_torchrun_matches_one_process_writes_once_and_resumes(tmp_path):
    import signal
    import time

    args = [*TRAIN, "iterations=4", "learner.strategy=ddp", f"out_dir={tmp_path / 'two'}"]
    launch(*TRAIN, "iterations=4", f"out_dir={tmp_path / 'one'}", processes=1)
    # The learner killed (every process, SIGKILL) once its first checkpoint is written, then started again.
    running = subprocess.Popen([*TORCHRUN, free_port(), *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "two" / "artifacts" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(running.pid)], capture_output=True, text=True, check=False).stdout.split()
    for pid in [*map(int, ranks), running.pid]:  # the launcher starts its processes in their own groups
        os.kill(pid, signal.SIGKILL)
    running.wait()
    for pid in map(int, ranks):
        while Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid):
            time.sleep(0.05)
    assert not (tmp_path / "two" / "summary.json").exists()  # killed mid-run
    launched = launch(*args)
    assert "ddp on 2 processes" in launched.stdout
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 5  # one line per iteration: one process wrote, the resume dropped none
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert value == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert 1 <= summary["resumed_from"] < 4  # it continued from a checkpoint, not from the start


@pytest.mark.sim
def test_an_fsdp_train_run_of_the_openvla_layout_matches_one_process(tmp_path):
    """The whole loop under fsdp (LoRA, gradient checkpointing): collection and evaluation through the sharded
    layers, the update, the gathered final adapters."""
    args = ["-m", "vla_cl.cli", "train", "policy=openvla", "policy_preset=tiny", "lora_rank=4", "updater=reinforce",
            "updater.episodes=2", "num_envs=2", "eval_episodes=2", "probe_episodes=1", "progress=false",
            "reward=env", "task=maniskill/PickCube-v1", "max_episode_steps=10", "iterations=2", "eval_greedy=true"]
    launch(*args, f"out_dir={tmp_path / 'one'}", processes=1)
    launch(*args, "learner.strategy=fsdp", "learner.gradient_checkpointing=true", f"out_dir={tmp_path / 'two'}")
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        for key, value in a.items():
            assert value == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    one, two = (load_file(str(tmp_path / run / "artifacts" / "policy" / "model.safetensors")) for run in ("one", "two"))
    assert any("lora_" in name for name in one) and one.keys() == two.keys()
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5  # (LoRA B moved ~1e-3 from zero)


@pytest.mark.sim
def test_processes_sharing_the_episodes_count_each_once(tmp_path):
    launch(*TRAIN, "iterations=1", "updater.episodes=4", "learner.shard_episodes=true", f"out_dir={tmp_path}")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["episodes"] == 4  # 2 + 2, not 4 on each
    assert lines[-1]["env_steps"] == lines[-1]["batch_rows"] <= 4 * 20


@pytest.mark.sim
def test_learner_processes_started_by_ray_match_one_process(tmp_path):
    pytest.importorskip("ray")
    launch(*TRAIN, "iterations=2", f"out_dir={tmp_path / 'one'}", processes=1)
    done = launch(*TRAIN, "iterations=2", "learner.processes=2", f"out_dir={tmp_path / 'ray'}", processes=1)
    assert "starting 2 learner processes on Ray" in done.stdout
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "ray")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key, value in a.items():
            assert value == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"


def test_the_accelerate_config_file_is_one_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / "multi_gpu.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "no"


def test_a_bad_learner_setting_names_the_field(tmp_path, monkeypatch, capsys):
    from vla_cl.cli import main
    from vla_cl.updaters.distributed import Learner, LearnerConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="learner.strategy: single, but 2 processes"):
        Learner(LearnerConfig(strategy="single"))
    monkeypatch.delenv("WORLD_SIZE")
    for bad, named in (("learner.strategy=zero", "learner.strategy"), ("learner.mixed_precision=fp8",
                                                                       "learner.mixed_precision")):
        assert main(["train", bad, f"out_dir={tmp_path / 'x'}"]) == 2
        assert named in capsys.readouterr().err
    with pytest.raises(ValueError, match="fsdp shards a language model's decoder layers"):
        Learner(LearnerConfig(strategy="fsdp")).prepare(_state_policy())
    with pytest.raises(ValueError, match="mixed_precision: bf16"):
        Learner(LearnerConfig(mixed_precision="bf16")).prepare(_state_policy())


def _state_policy():
    from vla_cl.policies import get_policy_class

    stats = {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}
    return get_policy_class("state_token").for_task(state_dim=6, action_stats=stats, preset="tiny", seed=0,
                                                    instructions=["reach"], value_head=False)
