"""Create ManiSkill3 tasks on the CPU backends, safely and quietly.

ManiSkill3 prompts on stdin for missing assets and calls ``exit()`` when the answer is no; both are
disabled here. SAPIEN's Vulkan driver is selected first (see :mod:`vla_cl.envs.vulkan`).

ManiSkill logs two warnings every time it builds a scene that say nothing a user can act on: actors and
articulations its own task code builds without an initial pose, and the WidowX gripper's controller
config lacking a mimic map (it then assumes the right one). A run builds hundreds of scenes, so those two
(``KNOWN_NOISE``) are dropped from ManiSkill's logger, once, when this module is imported; every other
ManiSkill message still shows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from vla_cl.envs.vulkan import configure_vulkan

# The beginnings of the ManiSkill log messages dropped (see the module docstring).
KNOWN_NOISE = (
    "No initial pose set for actor builder of ",
    "No initial pose set for articulation builder of ",
    "Mimic targets dictionary is missing for controller config for ",
)
# ManiSkill's logger is named "mani_skill " (trailing space, mani_skill/utils/logging_utils.py) and does not
# propagate; the plain name is covered in case a release fixes the spelling.
MANISKILL_LOGGERS = ("mani_skill ", "mani_skill")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KNOWN_NOISE)


def quiet_maniskill_log() -> None:
    """Drop ``KNOWN_NOISE`` from ManiSkill's logger (idempotent; works before ManiSkill is imported, since
    the logger is looked up by name)."""
    for name in MANISKILL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise())


quiet_maniskill_log()


def import_maniskill() -> None:
    """Import ManiSkill3's task registry with a Vulkan driver chosen and download prompts disabled."""
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    configure_vulkan()
    quiet_maniskill_log()
    import mani_skill.envs  # noqa: F401  (registers the gym ids)


def make_maniskill(
    env_id: str,
    *,
    obs_mode: str = "state",
    control_mode: str | None = None,
    render_size: int | None = None,
    sensor_size: int | None = None,
    **kwargs: Any,
):
    """``gym.make`` a ManiSkill3 task on PhysX CPU.

    ``render_size`` enables ``env.render()`` from the task's human render camera at that square size
    (other settings for that camera may come in ``human_render_camera_configs``);
    ``sensor_size`` sets the observation cameras' size for rgb observations. Without either, no
    renderer is created (faster, and state-only tasks need no image).
    """
    import gymnasium as gym

    import_maniskill()
    options: dict[str, Any] = dict(obs_mode=obs_mode, sim_backend="physx_cpu", num_envs=1, **kwargs)
    if control_mode is not None:
        options["control_mode"] = control_mode
    needs_renderer = render_size is not None or obs_mode not in {"state", "state_dict", "none"}
    options["render_backend"] = "cpu" if needs_renderer else "none"
    if render_size is not None:
        options["render_mode"] = "rgb_array"
        # Merged into the caller's settings (e.g. an intrinsic matrix fitted to the square frame).
        camera = dict(options.get("human_render_camera_configs") or {})
        options["human_render_camera_configs"] = {**camera, "width": render_size, "height": render_size}
    if sensor_size is not None:
        options["sensor_configs"] = {"width": sensor_size, "height": sensor_size}
    env = gym.make(env_id, **options)
    if needs_renderer:
        keep_renderer_alive(options["render_backend"])
    return env


_idle_renderers: dict[str, Any] = {}


def keep_renderer_alive(device: str) -> None:
    """Hold one idle SAPIEN render system for ``device`` for the rest of the process.

    SAPIEN tears its Vulkan renderer down when the last env that renders is freed, and the next such
    env then spends 10-20 s on lavapipe building it again (shader compilation). Creating several envs
    one after another (evaluation suites, tests) would pay that every time.
    """
    if device not in _idle_renderers:
        import sapien

        _idle_renderers[device] = sapien.render.RenderSystem(sapien.Device(device))


def to_numpy(value: Any) -> np.ndarray:
    """ManiSkill returns batched torch tensors even with one env; give a numpy array without the batch dim."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    return array[0] if array.ndim > 0 and array.shape[0] == 1 else array


def render_frame(env) -> np.ndarray:
    """One RGB frame (H, W, 3) uint8 from the env's render camera."""
    frame = to_numpy(env.render())
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame
