"""Rollout videos: mp4 files whose frames carry caption bands (the instruction above the scene; the step,
the labelled action and success below it), plus a contact sheet of key frames per episode under a header
that names the task, the policy, the seed, the outcome and the instruction.

Frames come from the task's render camera (``render_size``), whatever the policy observes, so a policy
acting on state still gets a video. ``vla-cl render task=... policy=expert|random|PATH out_dir=...``
(:func:`run`) writes ``artifacts/episode_<k>_seed<s>.mp4`` and ``artifacts/episode_<k>_seed<s>.png``.
Every file is written atomically (``vla_cl.files``), and an episode's metrics line is logged after its two
files, so run again on the same folder it records only the episodes that lack one of the three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.envs.registry import OBS_MODES, get_spec
from vla_cl.files import atomic_path, write_bytes_atomic, write_json_atomic

FONT_SCALE = 0.4
CHECKPOINT_FILES = ("config.json", "model.safetensors")
GREEN, RED, WHITE = (60, 220, 60), (235, 80, 70), (255, 255, 255)
BAND = (24, 24, 24)  # caption bands sit beside the scene, never on it; dark so the white text reads
ACTION_LABELS = ("x", "y", "z", "roll", "pitch", "yaw", "grip")  # the VLA convention's 7 components
Line = tuple[str, tuple[int, int, int]]  # a caption line and its colour


def _font(width: int) -> tuple[float, int]:
    """Font scale and line height for captions on an image ``width`` pixels wide: it grows with wide images;
    narrow ones (under 160 px) get a smaller font, else the action alone would take more rows than the scene."""
    scale = FONT_SCALE * max(1.0, width / 320) if width >= 160 else 0.75 * FONT_SCALE
    return scale, int(16 * scale / FONT_SCALE * 0.75) + 2


def _text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """Greedy word wrap by measured text width (a single over-long word keeps a line to itself)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", scale) <= width - 6:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def caption_band(lines: Sequence[Line], width: int, font_width: int | None = None) -> np.ndarray:
    """A dark band ``width`` pixels wide with one caption line per row, in the font for an image
    ``font_width`` pixels wide (default ``width``)."""
    import cv2

    scale, line = _font(font_width or width)
    band = np.empty((line * len(lines) + 6, width, 3), np.uint8)
    band[:] = BAND
    for i, (text, colour) in enumerate(lines):
        cv2.putText(band, text, (4, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return band


def action_lines(action: np.ndarray | None, width: int) -> list[str]:
    """The action as ``x:+0.01 y:-0.02 ...``, position, rotation and gripper kept on one line each where
    they fit, packed into as few lines as the width allows.

    The lines are laid out for placeholder values, so every frame of a video gets the same number of lines
    (frames of one video must have one size) whatever the values; a reset frame (no action) gets blanks.
    """
    scale, _ = _font(width)
    size = len(ACTION_LABELS) if action is None else np.asarray(action).size
    labels = [ACTION_LABELS[i] if i < len(ACTION_LABELS) else f"a{i}" for i in range(size)]
    groups = [list(range(i, min(i + 3, size))) for i in range(0, min(size, 6), 3)] + [[i] for i in range(6, size)]

    def fits(indices: list[int]) -> bool:
        return _text_width(" ".join(f"{labels[i]}:+0.00" for i in indices), scale) <= width - 6

    rows: list[list[int]] = []
    for group in groups:
        if rows and fits(rows[-1] + group):
            rows[-1] += group
        elif fits(group):
            rows.append(group)
        else:  # too narrow for the whole group: its components wrap onto rows of their own
            rows.append(group[:1])
            for i in group[1:]:
                if fits(rows[-1] + [i]):
                    rows[-1].append(i)
                else:
                    rows.append([i])
    if action is None:
        return ["no action yet"] + [""] * (len(rows) - 1)
    values = np.asarray(action, dtype=float).ravel()
    text = lambda value: f"{value:+.2f}".replace("-0.00", "+0.00")  # no sign flicker around zero
    return [" ".join(f"{labels[i]}:{text(values[i])}" for i in row) for row in rows]


def _even(image: np.ndarray) -> np.ndarray:
    # H.264/VP9 in yuv420p need an even height; one more band row keeps frames encodable as they are.
    if image.shape[0] % 2 == 0:
        return image
    return np.concatenate([image, np.full((1, *image.shape[1:]), BAND, np.uint8)])


def annotate(frame: np.ndarray, instruction: str | None, step: int, action: np.ndarray | None,
             success: bool) -> np.ndarray:
    """``frame`` (RGB) between caption bands: the instruction above (none when ``instruction`` is empty,
    e.g. on a contact sheet whose header shows it); the labelled action and the step and success below."""
    width = frame.shape[1]
    scale, _ = _font(width)
    parts = []
    if instruction:
        top = _wrap(str(instruction), width, scale)
        if len(top) > 2:  # two lines at most: the band must not outgrow the scene
            top = [top[0], top[1] + " ..."]
        parts.append(caption_band([(text, WHITE) for text in top], width))
    # The status wraps on narrow frames, into as many lines as the longest one would need (one frame size).
    rows = len(_wrap("step 0000 success: yes", width, scale))
    status = (_wrap(f"step {step} success: {'yes' if success else 'no'}", width, scale) + [""] * rows)[:rows]
    bottom = [(text, WHITE) for text in action_lines(action, width)]
    bottom += [(text, GREEN if success else WHITE) for text in status]
    return _even(np.concatenate([*parts, frame, caption_band(bottom, width)], axis=0))


# Codec per container: H.264 in mp4 (players everywhere), VP9 in WebM (every browser, Debian's Chromium
# included, which may lack H.264). The VP9 options favour speed: these are short, small clips.
CODECS = {".mp4": ("libx264", []), ".webm": ("libvpx-vp9", ["-deadline", "realtime", "-cpu-used", "8",
                                                            "-b:v", "0", "-crf", "36", "-row-mt", "1"])}


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> int:
    """Encode RGB frames (imageio's bundled ffmpeg) as mp4 or WebM by the path's suffix, atomically; returns
    the frame count read back (which proves the file decodes) before the file takes its name."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix not in CODECS:
        raise ValueError(f"videos are written as {' or '.join(CODECS)}, not {path.suffix!r}")
    codec, options = CODECS[path.suffix]
    with atomic_path(path) as tmp:
        encoded = tmp.with_name(tmp.name + path.suffix)  # ffmpeg picks the container by the suffix
        try:
            # macro_block_size=1: frame sides need not be multiples of 16 (no silent rescale). closing():
            # imageio's own context manager leaves ffmpeg running after an error, to write the file later.
            writer = imageio.get_writer(str(encoded), fps=fps, codec=codec, macro_block_size=1,
                                        ffmpeg_log_level="error", pixelformat="yuv420p", output_params=options)
            with contextlib.closing(writer):
                for frame in frames:
                    writer.append_data(np.ascontiguousarray(frame))
            count = count_frames(encoded)
            os.replace(encoded, tmp)
        finally:
            encoded.unlink(missing_ok=True)
    return count


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> int:
    """H.264 mp4 (see ``write_video``)."""
    return write_video(frames, Path(path).with_suffix(".mp4"), fps)


def count_frames(path: str | Path) -> int:
    """Decode a video completely and count its frames (proves the file plays)."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return sum(1 for _ in reader)


def contact_sheet(frames: Sequence[np.ndarray], count: int = 8, columns: int = 4,
                  header: Sequence[str | Line] = ()) -> np.ndarray:
    """``count`` frames spread evenly over the episode (first and last included), tiled in a grid, under a
    band with the ``header`` lines (wrapped to the sheet's width; a line may carry its colour).

    The header's font is that of an image two tiles wide: larger than the tiles' captions, yet not growing
    with the number of columns."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    tiles = [frames[i] for i in picks]
    columns = min(columns, len(tiles))
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    grid = np.concatenate(rows, axis=0)
    if not header:
        return grid
    width, font_width = grid.shape[1], min(grid.shape[1], 2 * tiles[0].shape[1])
    scale, _ = _font(font_width)
    lines = [(wrapped, colour) for line in header
             for text, colour in [(line, WHITE) if isinstance(line, str) else line]
             for wrapped in _wrap(text, width, scale)]
    return np.concatenate([caption_band(lines, width, font_width), grid], axis=0)


def sheet_header(task: str, policy: str, episode: Any, success_step: int | None) -> list[Line]:
    """The contact sheet's header: what ran, how the episode ended, and the instruction (once)."""
    outcome = (f"success at step {success_step}", GREEN) if success_step is not None else \
        (f"failure after {episode.length} steps", RED)
    return [(f"{task} | policy: {policy} | seed: {episode.seed}", WHITE), outcome,
            (f'"{episode.instruction}"', WHITE)]


def write_png(image: np.ndarray, path: str | Path) -> None:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    write_bytes_atomic(path, data.tobytes())


# ---------------------------------------------------------------------- policies by name
def load_policy(name: str, env: Any, task_id: str, seed: int = 0):
    """``expert``, ``random`` or a policy checkpoint folder (config.json + model.safetensors)."""
    if name == "expert":
        from vla_cl.envs.experts import ExpertPolicy

        return ExpertPolicy(task_id, env)
    if name == "random":
        from vla_cl.envs.vector import RandomPolicy

        return RandomPolicy(env.action_space, seed)
    return load_checkpoint_policy(Path(name))


def check_policy_name(name: str) -> None:
    """Raise ValueError unless ``name`` is expert, random or a folder holding a policy checkpoint."""
    if name in ("expert", "random"):
        return
    folder = Path(name)
    missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
    if missing:
        problem = "the folder does not exist" if not folder.is_dir() else "it lacks " + ", ".join(missing)
        raise ValueError(
            f"policy={name!r} is neither 'expert', 'random' nor a policy checkpoint folder "
            f"(expected a folder with {' + '.join(CHECKPOINT_FILES)}; {problem})"
        )


def load_checkpoint_policy(folder: Path):
    """The hook for saved policies: a folder with config.json + model.safetensors, loaded by
    ``vla_cl.policies.load_policy`` and wrapped as a batched callable on observation dicts."""
    check_policy_name(str(folder))
    try:
        from vla_cl.policies import load_policy as load_saved
    except ImportError as error:
        raise ValueError(f"cannot load {folder}: vla_cl.policies provides no load_policy yet ({error})") from None
    from vla_cl.policies.base import ObsBatch

    policy = load_saved(folder)
    return lambda observations: policy.act(ObsBatch.from_observations(observations))


# ---------------------------------------------------------------------- vla-cl render
@dataclasses.dataclass
class RenderConfig(RunConfig):
    task: str = option("maniskill/PickCube-v1", "task id (an unknown id lists the valid ones)")
    policy: str = option("expert", "expert, random, or a policy checkpoint folder (config.json + model.safetensors)")
    episodes: int = option(2, "episodes to record (episode k starts from seed + k)")
    render_size: int = option(256, "side of the video frames in pixels")
    obs_mode: str = option("state", "what the policy observes: state, rgb or both (videos always use the render camera)")
    image_size: int = option(128, "side of observation images (rgb/both)")
    fps: int = option(20, "video frame rate")
    key_frames: int = option(8, "frames on each episode's contact sheet")

    def __post_init__(self) -> None:
        require(self.episodes >= 1, "episodes", self.episodes, "an integer >= 1")
        require(64 <= self.render_size <= 1024, "render_size", self.render_size, "64..1024")
        require(1 <= self.fps <= 60, "fps", self.fps, "1..60")
        require(1 <= self.key_frames <= 32, "key_frames", self.key_frames, "1..32")
        require_choice("obs_mode", self.obs_mode, OBS_MODES)
        get_spec(self.task)  # an unknown id lists the valid ones
        check_policy_name(self.policy)
        if self.policy == "expert":
            from vla_cl.envs.experts import make_expert

            make_expert(self.task)  # names the tasks that have experts
        elif self.policy != "random":
            self._check_observations()

    def _check_observations(self) -> None:
        """obs_mode must give the checkpoint's policy everything it reads (its config.json says what)."""
        from vla_cl.policies import get_policy_class
        from vla_cl.policies.checkpoint import read_config_json
        from vla_cl.policies.registry import checkpoint_policy_name

        name = checkpoint_policy_name(self.policy)
        reads = set(get_policy_class(name).checkpoint_observations(read_config_json(self.policy))[0])
        gives = {"state": {"state"}, "rgb": {"image"}, "both": {"image", "state"}}
        fits = [mode for mode in OBS_MODES if reads <= gives[mode]]
        require(reads <= gives[self.obs_mode], "obs_mode", self.obs_mode,
                f"{' or '.join(fits)}: the {name} policy in {self.policy} reads "
                f"{' and '.join(sorted(reads))} observations; pass "
                f"{' or '.join('obs_mode=' + mode for mode in fits)}")


@dataclasses.dataclass
class Shot:
    """One rendered frame and what its caption says."""

    image: np.ndarray
    step: int
    action: np.ndarray | None  # the action that led to this frame (None on the reset frame)
    success: bool


def record_shots(env: Any, policy: Any, n_episodes: int, seed: int) -> list[tuple[Any, list[Shot]]]:
    """Roll ``policy`` out on one env; returns each episode with its uncaptioned frames."""
    from vla_cl.envs.vector import rollout

    shots: dict[int, list[Shot]] = {}

    def on_reset(slot: int, episode: int, obs: dict, info: dict) -> None:
        shots[episode] = [Shot(env.render(), 0, None, bool(info.get("success", False)))]

    def on_step(t) -> None:
        shots[t.episode].append(Shot(env.render(), t.step + 1, t.action, bool(t.info.get("success", False))))

    episodes = rollout(policy, env, n_episodes, seed=seed, on_step=on_step, on_reset=on_reset)
    return [(episode, shots[episode.index]) for episode in episodes]


def record(env: Any, policy: Any, n_episodes: int, seed: int) -> list[tuple[Any, list[np.ndarray]]]:
    """Roll ``policy`` out on one env; returns each episode with its captioned video frames."""
    return [(episode, [annotate(s.image, episode.instruction, s.step, s.action, s.success) for s in shots])
            for episode, shots in record_shots(env, policy, n_episodes, seed)]


def _logged_episodes(run_dir) -> dict[int, dict]:
    """The last metrics line of each recorded episode (a half-written line from a kill is skipped)."""
    records: dict[int, dict] = {}
    if run_dir.metrics_path.exists():
        for line in run_dir.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("episode"), int):
                records[record["episode"]] = record
    return records


def save_episode(config: RenderConfig, run_dir, index: int, episode: Any, shots: list[Shot]) -> None:
    """Episode ``index``'s video and contact sheet, then its metrics line (which marks it recorded)."""
    stem = f"episode_{index}_seed{episode.seed}"
    frames = [annotate(s.image, episode.instruction, s.step, s.action, s.success) for s in shots]
    start = time.perf_counter()
    written = write_video(frames, run_dir.artifact(stem + ".mp4"), config.fps)
    encode_s = time.perf_counter() - start
    if written != len(frames):
        raise RuntimeError(f"{stem}.mp4 reads back {written} frames, {len(frames)} were written")
    # On the sheet the header shows the instruction once, so the tiles carry only their step's caption.
    tiles = [annotate(s.image, None, s.step, s.action, s.success) for s in shots]
    success_step = next((s.step for s in shots if s.success), None)
    header = sheet_header(config.task, config.policy, episode, success_step)
    write_png(contact_sheet(tiles, config.key_frames, header=header), run_dir.artifact(stem + ".png"))
    run_dir.log(episode=index, seed=episode.seed, success=episode.success, length=episode.length,
                frames=written, encode_s=round(encode_s, 3))
    print(f"[render] {stem}.mp4: {written} frames, {'success' if episode.success else 'failure'} "
          f"after {episode.length} steps")


def record_episodes(config: RenderConfig, run_dir, indices: list[int]) -> dict[str, float]:
    """Record episodes ``indices`` (episode k from seed ``seed + k``); returns the timings for the summary."""
    from vla_cl.envs.registry import make

    for stale in run_dir.artifacts.glob(".episode_*.tmp*"):  # temporary files of a killed run
        stale.unlink(missing_ok=True)
    env = make(config.task, obs_mode=config.obs_mode, image_size=config.image_size, render_size=config.render_size)
    try:
        saved = None if config.policy in ("expert", "random") else load_policy(config.policy, env, config.task)
        # The first frame builds the renderer's pipelines (seconds on a CPU Vulkan driver); time it apart
        # so that the rollout rate below is the steady one.
        start = time.perf_counter()
        env.reset(seed=config.seed)
        env.render()
        first_frame_s = time.perf_counter() - start
        rollout_s, frames_total = 0.0, 0
        for k in indices:
            # Each episode's policy is seeded by its own reset seed, so that an episode's video does not
            # depend on which other episodes this invocation records.
            policy = saved or load_policy(config.policy, env, config.task, config.seed + k)
            start = time.perf_counter()
            ((episode, shots),) = record_shots(env, policy, 1, config.seed + k)
            rollout_s += time.perf_counter() - start
            frames_total += len(shots)
            save_episode(config, run_dir, k, episode, shots)
    finally:
        env.close()
    return {"first_frame_s": round(first_frame_s, 2), "rollout_frames_per_s": round(frames_total / rollout_s, 2)}


def run(config: RenderConfig, run_dir) -> int:
    stems = {k: f"episode_{k}_seed{config.seed + k}" for k in range(config.episodes)}
    logged = _logged_episodes(run_dir)
    done = [k for k, stem in stems.items() if k in logged and logged[k].get("seed") == config.seed + k
            and all((run_dir.artifacts / (stem + suffix)).is_file() for suffix in (".mp4", ".png"))]
    todo = [k for k in stems if k not in done]
    if done:
        print(f"[render] reused {len(done)} of {config.episodes} episodes already recorded in {run_dir.artifacts}"
              + (f"; recording episodes {todo}" if todo else ""))
    summary_path = run_dir.path / "summary.json"
    if todo:
        timing = record_episodes(config, run_dir, todo)
    else:  # nothing recorded now: the timings stay those of the run that recorded
        previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        timing = {key: previous.get(key) for key in ("first_frame_s", "rollout_frames_per_s")}
    logged = _logged_episodes(run_dir)
    write_json_atomic(summary_path, {
        "task": config.task, "policy": config.policy, "episodes": config.episodes,
        "success_rate": float(np.mean([bool(logged[k]["success"]) for k in stems])),
        **timing,
    })
    return 0
