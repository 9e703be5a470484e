"""``vla-cl sim-check``: prove the simulation stack works on this machine.

Creates a ManiSkill3 task on PhysX CPU, resets it with a seed, takes random steps and renders frames
from the render camera; writes the frames and the measured speeds into the run directory. Also
``machine_report``: the versions, threads, accelerator and Vulkan driver that ``vla-cl info`` prints.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from vla_cl.config import RunConfig, option, require
from vla_cl.runs import RunDir


@dataclasses.dataclass
class SimCheckConfig(RunConfig):
    env_id: str = option("PickCube-v1", "ManiSkill3 task id (one that needs no asset download)")
    steps: int = option(20, "random-action steps to take")
    image_size: int = option(64, "side of the rendered square frames in pixels")
    frames: int = option(4, "frames to save, spread over the rollout")

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        require(16 <= self.image_size <= 1024, "image_size", self.image_size, "16..1024")
        require(1 <= self.frames <= self.steps + 1, "frames", self.frames, f"1..steps+1 ({self.steps + 1})")
        check_env_id(self.env_id)


def check_env_id(env_id: str) -> None:
    """Raise ValueError unless ManiSkill3 registers ``env_id`` (importing its registry takes seconds, but
    creates no env), naming the close matches and every valid id."""
    import difflib

    from vla_cl.envs.maniskill import import_maniskill

    import_maniskill()
    from mani_skill.utils.registration import REGISTERED_ENVS

    if env_id not in REGISTERED_ENVS:
        valid = sorted(REGISTERED_ENVS)
        close = difflib.get_close_matches(env_id, valid, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        require(False, "env_id", env_id, f"a ManiSkill3 task id.{hint} Valid ids: {', '.join(valid)}")


def frame_is_blank(frame: np.ndarray, min_std: float = 2.0) -> bool:
    """A frame counts as blank when its pixels barely vary (all black, all white, or one colour)."""
    return float(frame.astype(np.float32).std()) < min_std


def check_simulation(config: SimCheckConfig) -> dict:
    """Run the check; returns speeds, the saved frames and whether every frame showed a scene."""
    from vla_cl.envs.maniskill import make_maniskill, render_frame
    from vla_cl.envs.vulkan import configure_vulkan

    driver = configure_vulkan()
    start = time.perf_counter()
    env = make_maniskill(config.env_id, render_size=config.image_size)
    try:
        env.reset(seed=config.seed)
        env.action_space.seed(config.seed)
        created = time.perf_counter() - start
        keep = set(np.linspace(0, config.steps, config.frames).round().astype(int).tolist())
        frames = [render_frame(env)] if 0 in keep else []
        step_time = 0.0
        for step in range(1, config.steps + 1):
            t0 = time.perf_counter()
            env.step(env.action_space.sample())
            step_time += time.perf_counter() - t0
            if step in keep:
                frames.append(render_frame(env))
    finally:
        env.close()
    return {
        "env_id": config.env_id,
        "vulkan": driver,
        "create_s": round(created, 3),
        "steps_per_s": round(config.steps / step_time, 1),
        "frame_shape": list(frames[0].shape),
        "blank_frames": sum(frame_is_blank(f) for f in frames),
        "frames": frames,
    }


def run(config: SimCheckConfig, run_dir: RunDir) -> int:
    import cv2

    result = check_simulation(config)
    frames = result.pop("frames")
    strip = np.concatenate(frames, axis=1)
    cv2.imwrite(str(run_dir.artifact("frames.png")), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    run_dir.log(**result)
    ok = result["blank_frames"] == 0
    print(
        f"[sim-check] {config.env_id}: {result['steps_per_s']} steps/s, created in {result['create_s']} s, "
        f"{len(frames)} frames {result['frame_shape']} ({'OK' if ok else str(result['blank_frames']) + ' BLANK'}), "
        f"Vulkan: {result['vulkan']}"
    )
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------ the machine

PACKAGES = ("torch", "transformers", "peft", "gymnasium", "mani-skill", "sapien", "hydra-core", "lm-eval", "trl")


def machine_report() -> dict:
    """What this machine offers the toolkit: versions, threads, accelerator and the Vulkan driver SAPIEN uses
    (``vla-cl info`` prints it; the razor keeps it beside its results)."""
    import importlib.metadata as md
    import os
    import platform

    import torch

    from vla_cl.envs.vulkan import configure_vulkan

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "vulkan": configure_vulkan(),
        "versions": versions,
    }
