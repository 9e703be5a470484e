"""Where a Bridge scene's objects start, and how its images may be restyled: the ``layout`` and ``visual``
options of the ``simpler/*`` tasks.

Layouts. SimplerEnv's Bridge scenes start every episode from one of a fixed list of configurations
(``xyz_configs`` x ``quat_configs`` of ManiSkill's scene: carrot and spoon 12 x 2, stack 24 x 1, eggplant
8 x 8), which ManiSkill addresses as ``episode_id``. That list is these tasks' training grid:

* ``layout="grid"``: reset seed s starts from configuration ``s mod N`` (N configurations in all), passed to
  ManiSkill as its own ``episode_id``, so any N consecutive seeds cover every configuration once and an
  evaluation of more than N episodes repeats starts (it says how many distinct ones it covered);
* ``layout="off_grid"``: each object that the configurations place at two or more points starts at a point
  drawn (from the episode seed's layout stream) uniformly over the bounding box of its grid points,
  widened to at least ``MIN_SPAN`` a side, at least ``MIN_GRID_DISTANCE`` from every one of them, with the
  two objects at least ``SEPARATION`` times the smallest distance the configurations ever put between them;
  an object the configurations always put at one point (the eggplant scene's basket, which is part of the
  table) stays there. Orientations are the configurations' own (drawn uniformly). No training episode
  starts there, and every off-grid start is distinct.

Each reset's ``initial_state`` (in the wrapper's info) names the configuration (``config 7/24``) on the
grid, and is ``None`` (a continuous draw: distinct from every other episode) off it.

Visuals. ``visual="shifted"`` changes what the camera sees and nothing the physics does: the real photo the
scene greenscreens behind the robot and objects gets a per-channel gain in [0.6, 1.4] and a brightness
offset in [-40, 40] (of 255), and the scene's lights are retinted (:func:`vla_cl.envs.variation.retint_lights`),
each drawn per episode from its seed. SimplerEnv has no such variant; it is the part of RL4VLA's vision axis
(unseen table appearance, lighting) that a greenscreened scene can offer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vla_cl.envs.variation import LightRetinter

MIN_GRID_DISTANCE = 0.02  # m: an off-grid object starts at least this far from each of its grid points
MIN_SPAN = 0.06  # m: the off-grid box is at least this wide along x and y
SEPARATION = 0.8  # off grid, the objects are at least this fraction of their closest configured distance apart
MAX_DRAWS = 10_000


@dataclasses.dataclass(frozen=True)
class Start:
    """One episode's start: ManiSkill's configuration index, or explicit positions and orientations."""

    episode_id: int | None = None
    xyz: np.ndarray | None = None  # (2 objects, 3) m, world frame
    quat: np.ndarray | None = None  # (2 objects, 4) wxyz

    @property
    def name(self) -> str | None:
        return None if self.episode_id is None else f"config {self.episode_id}"


class BridgeStarts:
    """The ``layout`` option of a Bridge scene (see the module docstring), read off the scene's own
    configurations."""

    RESET_KEY = "vla_cl_start"  # the backend reset option the scene (FillsSceneGaps) reads

    def __init__(self, xyz_configs: np.ndarray, quat_configs: np.ndarray):
        self.xyz = np.asarray(xyz_configs, dtype=np.float64)  # (P, 2, 3)
        self.quat = np.asarray(quat_configs, dtype=np.float64)  # (Q, 2, 4)
        self.count = len(self.xyz) * len(self.quat)
        self.points = [np.unique(np.round(self.xyz[:, i, :2], 6), axis=0) for i in range(2)]
        gaps = np.linalg.norm(self.xyz[:, 0, :2] - self.xyz[:, 1, :2], axis=1)
        self.min_separation = SEPARATION * float(gaps.min())

    def start(self, layout: str, seed: int | None, rng: np.random.Generator) -> Start:
        if layout == "grid":
            index = int(rng.integers(self.count)) if seed is None else int(seed) % self.count
            return Start(episode_id=index)
        if layout != "off_grid":
            raise ValueError(f"the Bridge scenes offer layouts grid and off_grid, not {layout!r}")
        quat = self.quat[int(rng.integers(len(self.quat)))]
        for _ in range(MAX_DRAWS):
            xy = [self._draw(i, rng) for i in range(2)]
            if np.linalg.norm(xy[0] - xy[1]) >= self.min_separation:
                heights = self.xyz[0, :, 2]
                return Start(xyz=np.stack([np.r_[xy[i], heights[i]] for i in range(2)]), quat=quat)
        raise RuntimeError(f"no off-grid start found in {MAX_DRAWS} draws (grid points {self.points})")

    def _draw(self, i: int, rng: np.random.Generator) -> np.ndarray:
        points = self.points[i]
        if len(points) == 1:
            return points[0]
        low, high = points.min(0), points.max(0)
        widen = np.maximum(0.0, MIN_SPAN - (high - low)) / 2
        low, high = low - widen, high + widen
        for _ in range(MAX_DRAWS):
            xy = rng.uniform(low, high)
            if np.min(np.linalg.norm(points - xy, axis=1)) >= MIN_GRID_DISTANCE:
                return xy
        raise RuntimeError(f"no point of {low}..{high} lies {MIN_GRID_DISTANCE} m from the grid {points}")

    # The wrapper's placement interface (vla_cl.envs.wrapper.VLAEnv): the start is chosen before the backend
    # resets (the scene settles its objects where they start), nothing is moved after.
    def reset_options(self, sim: Any, layout: str, seed: int | None, rng: np.random.Generator
                      ) -> tuple[dict[str, Any], str | None]:
        start = self.start(layout, seed, rng)
        return {self.RESET_KEY: start}, start.name

    def apply(self, sim: Any, layout: str, rng: np.random.Generator) -> bool:
        return False


def use_start(sim: Any, start: Start, options: dict) -> Any:
    """Inside the scene's ``_initialize_episode``: make ManiSkill's configuration lookup give ``start``.
    Returns what :func:`restore_configs` needs to put the scene's own configurations back."""
    import torch

    if start.episode_id is not None:
        options["episode_id"] = torch.tensor([start.episode_id])
        return None
    saved = sim.xyz_configs, sim.quat_configs
    sim.xyz_configs = torch.as_tensor(start.xyz[None], dtype=saved[0].dtype, device=saved[0].device)
    sim.quat_configs = torch.as_tensor(start.quat[None], dtype=saved[1].dtype, device=saved[1].device)
    options["episode_id"] = torch.tensor([0])
    return saved


def restore_configs(sim: Any, saved: Any) -> None:
    if saved is not None:
        sim.xyz_configs, sim.quat_configs = saved


class BridgeRestyler(LightRetinter):
    """``visual="shifted"`` for a greenscreened scene (see the module docstring)."""

    def __init__(self, camera: str):
        super().__init__()
        self.camera = camera
        self._photo: Any = None

    def __call__(self, sim: Any, rng: np.random.Generator) -> None:
        import torch

        overlays = getattr(sim, "_rgb_overlay_images", None) or {}
        if not isinstance(overlays.get(self.camera), torch.Tensor):  # no camera image (state observations)
            self.retint(sim, rng)
            return
        if self._photo is None:
            self._photo = overlays[self.camera].clone()
        gain = torch.as_tensor(rng.uniform(0.6, 1.4, size=3), dtype=torch.float32)
        offset = float(rng.uniform(-40, 40))
        shifted = self._photo.float() * gain.to(self._photo.device) + offset
        overlays[self.camera] = shifted.clamp(0, 255).to(self._photo.dtype)
        self.retint(sim, rng)
