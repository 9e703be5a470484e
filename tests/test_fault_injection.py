"""Kill a training run at random points, many times: every restart must resume to the very result an
uninterrupted run reaches (or refuse with a clear message), and no file in the run folder is ever found
half-written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.updater_toy import register_toy
from vla_cl.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from tests.updater_toy import register_toy
register_toy()
from vla_cl.cli import main
sys.exit(main({args!r}))
"""
SEEDS = 20
MID_CHECKPOINT = 6  # seeds that wait for a checkpoint being written and kill in the middle of it


def args(out: Path) -> list[str]:
    return ["train", "updater=ppo", "task=toy/Reach-v0", "policy_preset=tiny", "num_envs=2", "eval_episodes=2",
            "probe_episodes=1", "progress=false", "tensorboard=false", "iterations=10", "checkpoint_every=1", "refresh_every=1",
            "eval_every=3", "updater.episodes=4", "updater.optim.minibatches=2", f"out_dir={out}"]


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(repo=str(REPO), args=args(out))], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def intact(out: Path) -> None:
    """Every file a reader trusts parses completely (hidden temporaries are the writers' own business)."""
    for path in out.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(out).parts):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.name == "latest":
            assert (path.parent / path.read_text().strip()).is_dir(), path


def final(out: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    drop = ("time", "seconds", "samples_per_s")
    return [{k: v for k, v in line.items() if k not in drop} for line in lines], \
        load_file(str(out / "artifacts" / "policy" / "model.safetensors"))


@pytest.mark.slow
def test_random_kills_resume_to_the_uninterrupted_result(tmp_path):
    register_toy()
    baseline = tmp_path / "baseline"
    assert main(args(baseline)) == 0
    expected_lines, expected_weights = final(baseline)
    began = time.perf_counter()
    whole = start(tmp_path / "timing")
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-2000:]
    duration = time.perf_counter() - began
    outcomes = []
    for seed in range(SEEDS):
        out = tmp_path / f"run{seed}"
        process = start(out)
        if seed < MID_CHECKPOINT:  # kill while a checkpoint folder is being written
            checkpoints = out / "artifacts" / "checkpoints"
            deadline = time.time() + duration + 30
            wanted = random.Random(seed).randint(1, 4)
            seen: set[str] = set()
            while process.poll() is None and time.time() < deadline:
                staging = [e.name for e in checkpoints.glob(".iter-*")] if checkpoints.is_dir() else []
                seen.update(staging)
                if staging and len(seen) >= wanted:
                    break
                time.sleep(0.001)
        else:
            time.sleep(random.Random(seed).uniform(0.5, duration))
        killed = process.poll() is None
        if killed:
            process.send_signal(signal.SIGKILL)
        process.wait()
        intact(out) if out.exists() else None
        again = start(out)
        code = again.wait(timeout=300)
        err = again.stderr.read().decode()
        if code == 2:  # a refusal must say what is wrong and what to do, not dump a traceback
            assert "Traceback" not in err and "out_dir" in err, err[-2000:]
            outcomes.append("refused")
            continue
        assert code == 0, err[-3000:]
        intact(out)
        assert not [p for p in out.rglob(".*") if p.name != ".lock"], "a temporary file survived the restart"
        lines, weights = final(out)
        assert lines == expected_lines, f"seed {seed}: the resumed metrics differ"
        assert weights.keys() == expected_weights.keys() and all(
            (weights[k] == expected_weights[k]).all() for k in weights), f"seed {seed}: the resumed weights differ"
        outcomes.append("killed+resumed" if killed else "finished before the kill")
    print(f"[fault injection] {SEEDS} runs, one {duration:.1f} s: {outcomes}")
    assert outcomes.count("killed+resumed") >= SEEDS // 2
