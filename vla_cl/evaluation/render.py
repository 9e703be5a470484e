"""``vla-cl render``: rollout videos of a policy, with a contact sheet of key frames per episode.

    vla-cl render task=maniskill/PickCube-v1 policy=expert|random|PATH out_dir=...

writes ``artifacts/episode_<k>_seed<s>.mp4`` and ``artifacts/episode_<k>_seed<s>.png`` (the frames, captions,
writers and contact sheets are ``vla_cl.envs.video``'s). The policy is ``expert``, ``random`` or a saved
checkpoint folder (:func:`load_policy`); loading a saved policy is why this command sits above the envs and
the policies rather than in ``vla_cl.envs``. An episode's metrics line is logged after its two files, so run
again on the same folder it records only the episodes that lack one of the three.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.envs.registry import OBS_MODES, get_spec
from vla_cl.envs.video import (
    Shot,
    annotate,
    contact_sheet,
    record_shots,
    sheet_header,
    write_png,
    write_video,
)
from vla_cl.files import write_json_atomic

CHECKPOINT_FILES = ("config.json", "model.safetensors")


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
    from vla_cl.policies import load_policy as load_saved
    from vla_cl.policies.base import ObsBatch

    check_policy_name(str(folder))
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
