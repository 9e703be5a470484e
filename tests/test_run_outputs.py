"""`vla-cl demos` and `vla-cl render` continue in their run folder, and what they write reads well.

Run again on the same out_dir, a command reuses what a finished run left (no simulation, no new metrics
lines) and redoes only what is missing; an interrupted collection starts over without its metrics lines.
The contact sheet carries a header band (task, policy, seed, outcome, instruction) above its tiles, and
captions sit in bands beside the scene instead of on it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_cl.cli import main as cli

RENDER = ["render", "task=maniskill/PushCube-v1", "policy=expert", "episodes=2", "render_size=64"]


def metrics_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tiny_demos():
    from vla_cl.envs.demos import Demos

    arrays = {"state": np.zeros((4, 3), np.float32), "action": np.zeros((4, 7), np.float32),
              "reward": np.zeros(4, np.float32), "episode_index": np.array([0, 0, 1, 1]),
              "step": np.array([0, 1, 0, 1]), "success": np.array([False, True, False, True])}
    meta = {"format_version": 1, "state_dim": 3, "success_rate": 1.0,
            "counts": {"episodes": 2, "steps": 4, "attempts": 2}}
    return Demos(arrays, meta)


# ---------------------------------------------------------------------- demos
@pytest.mark.sim
def test_demos_twice_reuses_the_set(tmp_path, monkeypatch, capsys, needs_sim):
    import vla_cl.envs.demos as demos_module

    out = tmp_path / "demos"
    args = ["demos", "task=maniskill/PushCube-v1", "n=2", f"out_dir={out}"]
    assert cli(args) == 0
    before = (out / "metrics.jsonl").read_bytes()
    lines = metrics_lines(out)
    assert [line["episode"] for line in lines] == list(range(len(lines)))  # one line per attempt
    assert lines[-1]["kept"] == 2 and [line["kept"] for line in lines] == sorted(line["kept"] for line in lines)
    assert not [p.name for p in (out / "artifacts").iterdir() if p.name.startswith(".")]  # no temporaries

    def no_collecting(*args, **kwargs):
        raise AssertionError("a complete demonstration set was collected again")

    monkeypatch.setattr(demos_module, "collect_demos", no_collecting)
    capsys.readouterr()
    assert cli(args) == 0
    assert "reused the complete set" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_bytes() == before
    assert len(demos_module.load_demos(out)) == sum(json.loads((out / "artifacts" / "demos.json").read_text())
                                                    ["episode_lengths"])


def test_an_interrupted_collection_starts_over_without_its_metrics(tmp_path, monkeypatch):
    import vla_cl.envs.demos as demos_module

    calls = []

    def collector(task, n, *, log, **kwargs):  # a stand-in for the expert: logs attempts like the real one
        calls.append(task)
        for attempt in range(2):
            log(episode=attempt, seed=attempt, success=True, length=2, kept=attempt + 1)
            if len(calls) == 1:
                raise KeyboardInterrupt  # the first run is killed after its first attempt
        return tiny_demos()

    monkeypatch.setattr(demos_module, "collect_demos", collector)
    out = tmp_path / "demos"
    args = ["demos", "task=maniskill/PushCube-v1", "n=2", f"out_dir={out}"]
    assert cli(args) != 0
    assert len(metrics_lines(out)) == 1 and not demos_module.is_complete(out / "artifacts")
    assert cli(args) == 0
    assert [(line["episode"], line["kept"]) for line in metrics_lines(out)] == [(0, 1), (1, 2)]
    assert cli(args) == 0 and len(calls) == 2  # the third run reuses the set


def test_a_truncated_demos_file_says_to_record_it_again(tmp_path):
    from vla_cl.envs.demos import ARRAYS_FILE, is_complete, load_demos, save_demos

    folder = save_demos(tiny_demos(), tmp_path / "set")
    assert is_complete(folder) and len(load_demos(folder)) == 4
    data = (folder / ARRAYS_FILE).read_bytes()
    for size in (len(data) - 10, 40, 3):
        (folder / ARRAYS_FILE).write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"{ARRAYS_FILE}.*record it again") as error:
            load_demos(folder)
        assert str(folder / ARRAYS_FILE) in str(error.value)


# ---------------------------------------------------------------------- videos and contact sheets
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One `vla-cl render` folder (2 PushCube expert episodes at 64 px) shared by the tests below."""
    from tests.conftest import simulation_required

    if not simulation_required():
        pytest.skip("VLA_CL_VULKAN=skip: set up without simulation")
    out = tmp_path_factory.mktemp("render") / "run"
    assert cli([*RENDER, f"out_dir={out}"]) == 0
    return out


def snapshot(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "artifacts").iterdir())}


@pytest.mark.sim
def test_render_twice_records_only_what_is_missing(rendered, monkeypatch, capsys):
    from vla_cl.evaluation import render

    out = rendered
    files = snapshot(out)
    assert sorted(files) == [f"episode_{k}_seed{k}{s}" for k in (0, 1) for s in (".mp4", ".png")]
    metrics = (out / "metrics.jsonl").read_bytes()
    first = {line["episode"]: line for line in metrics_lines(out)}
    assert sorted(first) == [0, 1]

    def no_recording(*args, **kwargs):
        raise AssertionError("an episode that is already recorded was recorded again")

    with monkeypatch.context() as patch:
        patch.setattr(render, "record_shots", no_recording)
        assert cli([*RENDER, f"out_dir={out}"]) == 0
    assert "reused 2 of 2" in capsys.readouterr().out
    assert snapshot(out) == files and (out / "metrics.jsonl").read_bytes() == metrics
    assert json.loads((out / "summary.json").read_text())["success_rate"] == 1.0

    (out / "artifacts" / "episode_1_seed1.mp4").unlink()
    assert cli([*RENDER, f"out_dir={out}"]) == 0
    lines = metrics_lines(out)
    assert len(lines) == 3 and lines[-1]["episode"] == 1  # only the episode without its video
    assert {k: lines[-1][k] for k in ("seed", "length", "success", "frames")} == \
        {k: first[1][k] for k in ("seed", "length", "success", "frames")}  # the same episode again
    after = snapshot(out)
    assert sorted(after) == sorted(files)  # no temporaries left
    assert {n: t for n, t in after.items() if n.startswith("episode_0")} == \
        {n: t for n, t in files.items() if n.startswith("episode_0")}


@pytest.mark.sim
def test_the_contact_sheet_has_a_header_band(rendered):
    import imageio.v2 as imageio

    from vla_cl.envs.video import BAND, annotate

    sheet = imageio.imread(rendered / "artifacts" / "episode_0_seed0.png")
    tile = annotate(np.zeros((64, 64, 3), np.uint8), None, 0, None, False)
    length = metrics_lines(rendered)[0]["length"]
    rows = -(-min(8, length + 1) // 4)  # key_frames=8 of the episode's frames, in 4 columns
    assert sheet.shape[1] == 4 * 64 and sheet.shape[0] > rows * tile.shape[0]
    header = sheet[: sheet.shape[0] - rows * tile.shape[0]]
    assert (header != np.array(BAND, np.uint8)).any(axis=-1).sum() > 50  # text drawn, not just a dark band


def test_captions_sit_beside_the_scene():
    from vla_cl.envs.video import annotate, contact_sheet

    frame = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    captioned = annotate(frame, "push the blue cube forward onto the target", 7, np.arange(7) / 10, True)
    reset = annotate(frame, "push the blue cube forward onto the target", 0, None, False)
    assert captioned.shape == reset.shape and captioned.shape[0] > frame.shape[0]  # one size for a video
    assert captioned.shape[0] % 2 == 0  # yuv420p needs even sides
    offsets = [o for o in range(captioned.shape[0] - 95) if np.array_equal(captioned[o:o + 96], frame)]
    assert len(offsets) == 1 and offsets[0] > 0  # the whole scene, untouched, under the instruction band
    tile = annotate(frame, None, 7, np.arange(7) / 10, True)
    assert np.array_equal(tile[:96], frame) and tile.shape[0] > 96  # no instruction band on sheet tiles

    tiles = [np.full((8, 8, 3), i, np.uint8) for i in range(10)]
    plain = contact_sheet(tiles, count=5, columns=3)
    assert plain.shape == (16, 24, 3)
    headed = contact_sheet(tiles, count=5, columns=3, header=["task", "success at step 3"])
    assert headed.shape[1] == 24 and headed.shape[0] > 16 and np.array_equal(headed[-16:], plain)
