"""Rollout videos: mp4 files with the instruction, step, action and success drawn on every frame, plus a
contact sheet of key frames per episode.

Frames come from the task's render camera (``render_size``), whatever the policy observes, so a policy
acting on state still gets a video. ``vla-cl render task=... policy=expert|random|PATH out_dir=...``
(:func:`run`) writes ``artifacts/episode_<k>_seed<s>.mp4`` and ``artifacts/episode_<k>_seed<s>.png``.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.envs.registry import OBS_MODES, get_spec

FONT_SCALE = 0.4
CHECKPOINT_FILES = ("config.json", "model.safetensors")
GREEN, WHITE = (60, 220, 60), (255, 255, 255)


def annotate(frame: np.ndarray, instruction: str, step: int, action: np.ndarray | None, success: bool) -> np.ndarray:
    """A copy of ``frame`` (RGB) with a caption band: instruction on top; step, action, success below."""
    import cv2

    height, width = frame.shape[:2]
    scale = FONT_SCALE * max(1.0, width / 320)
    line = int(16 * scale / FONT_SCALE * 0.75) + 2
    chars = max(10, int(width / (7.5 * scale / FONT_SCALE)))
    top = textwrap.wrap(instruction, chars)[:2]
    status = f"step {step}  success: {'yes' if success else 'no'}"
    numbers = "" if action is None else "a=[" + " ".join(f"{v:+.2f}" for v in np.asarray(action).ravel()) + "]"
    bottom = textwrap.wrap(numbers, chars)[:2] + [status]
    out = frame.copy()
    bands = ((0, len(top)), (height - line * len(bottom) - 4, len(bottom)))
    for y0, rows in bands:
        y1 = min(height, y0 + line * rows + 4)
        out[y0:y1] = (out[y0:y1] * 0.4).astype(np.uint8)  # darken behind the text so it reads on any scene
    for i, text in enumerate(top):
        cv2.putText(out, text, (4, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, 1, cv2.LINE_AA)
    for i, text in enumerate(bottom):
        colour = GREEN if success and i == len(bottom) - 1 else WHITE
        y = height - line * (len(bottom) - 1 - i) - 4
        cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


# Codec per container: H.264 in mp4 (players everywhere), VP9 in WebM (every browser, Debian's Chromium
# included, which may lack H.264). The VP9 options favour speed: these are short, small clips.
CODECS = {".mp4": ("libx264", []), ".webm": ("libvpx-vp9", ["-deadline", "realtime", "-cpu-used", "8",
                                                            "-b:v", "0", "-crf", "36", "-row-mt", "1"])}


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> int:
    """Encode RGB frames (imageio's bundled ffmpeg) as mp4 or WebM by the path's suffix; returns the frame
    count read back (which proves the file decodes)."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix not in CODECS:
        raise ValueError(f"videos are written as {' or '.join(CODECS)}, not {path.suffix!r}")
    codec, options = CODECS[path.suffix]
    # macro_block_size=1: frame sides need not be multiples of 16 (no silent rescale).
    with imageio.get_writer(str(path), fps=fps, codec=codec, macro_block_size=1, ffmpeg_log_level="error",
                            pixelformat="yuv420p", output_params=options) as writer:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    return count_frames(path)


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> int:
    """H.264 mp4 (see ``write_video``)."""
    return write_video(frames, Path(path).with_suffix(".mp4"), fps)


def count_frames(path: str | Path) -> int:
    """Decode a video completely and count its frames (proves the file plays)."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return sum(1 for _ in reader)


def contact_sheet(frames: Sequence[np.ndarray], count: int = 8, columns: int = 4) -> np.ndarray:
    """``count`` frames spread evenly over the episode (first and last included), tiled in a grid."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    tiles = [frames[i] for i in picks]
    columns = min(columns, len(tiles))
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_png(image: np.ndarray, path: str | Path) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


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


def record(env: Any, policy: Any, n_episodes: int, seed: int) -> list[tuple[Any, list[np.ndarray]]]:
    """Roll ``policy`` out on one env; returns each episode with its annotated frames."""
    from vla_cl.envs.vector import rollout

    frames: dict[int, list[np.ndarray]] = {}

    def on_reset(slot: int, episode: int, obs: dict, info: dict) -> None:
        frames[episode] = [annotate(env.render(), obs["instruction"], 0, None, bool(info.get("success")))]

    def on_step(t) -> None:
        success = bool(t.info.get("success", False))
        frames[t.episode].append(annotate(env.render(), t.obs["instruction"], t.step + 1, t.action, success))

    episodes = rollout(policy, env, n_episodes, seed=seed, on_step=on_step, on_reset=on_reset)
    return [(episode, frames[episode.index]) for episode in episodes]


def run(config: RenderConfig, run_dir) -> int:
    from vla_cl.envs.registry import make

    env = make(config.task, obs_mode=config.obs_mode, image_size=config.image_size, render_size=config.render_size)
    try:
        policy = load_policy(config.policy, env, config.task, config.seed)
        # The first frame builds the renderer's pipelines (seconds on a CPU Vulkan driver); time it apart
        # so that the rollout rate below is the steady one.
        start = time.perf_counter()
        env.reset(seed=config.seed)
        env.render()
        first_frame_s = time.perf_counter() - start
        start = time.perf_counter()
        recorded = record(env, policy, config.episodes, config.seed)
        rollout_s = time.perf_counter() - start
    finally:
        env.close()
    for episode, frames in recorded:
        stem = f"episode_{episode.index}_seed{episode.seed}"
        start = time.perf_counter()
        written = write_mp4(frames, run_dir.artifact(stem + ".mp4"), config.fps)
        encode_s = time.perf_counter() - start
        write_png(contact_sheet(frames, config.key_frames), run_dir.artifact(stem + ".png"))
        if written != len(frames):
            raise RuntimeError(f"{stem}.mp4 reads back {written} frames, {len(frames)} were written")
        run_dir.log(episode=episode.index, seed=episode.seed, success=episode.success, length=episode.length,
                    frames=written, encode_s=round(encode_s, 3))
        print(f"[render] {stem}.mp4: {written} frames, {'success' if episode.success else 'failure'} "
              f"after {episode.length} steps")
    frames_total = sum(len(f) for _, f in recorded)
    run_dir.write_json("summary.json", {
        "task": config.task, "policy": config.policy, "episodes": len(recorded),
        "success_rate": float(np.mean([e.success for e, _ in recorded])),
        "first_frame_s": round(first_frame_s, 2),
        "rollout_frames_per_s": round(frames_total / rollout_s, 2),
    })
    return 0
