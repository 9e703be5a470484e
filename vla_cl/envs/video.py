"""Rollout videos: frames with caption bands (the instruction above the scene; the step, the labelled action
and success below it), mp4/WebM writers, and contact sheets of key frames under a header that names the task,
the policy, the seed, the outcome and the instruction.

Frames come from the task's render camera (``render_size``), whatever the policy observes, so a policy
acting on state still gets a video. :func:`record` rolls out any batched callable on observation dicts (an
expert, random actions, a wrapped policy); what loads a policy by name and the ``vla-cl render`` command sit
one layer up, in ``vla_cl.evaluation.render``, since envs never import policies. Every file is written
atomically (``vla_cl.files``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.files import atomic_path, write_bytes_atomic

FONT_SCALE = 0.4
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
