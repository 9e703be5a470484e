"""Seeded variations of a task's episodes: where the objects start, what the instruction says, how the
scene looks. They implement the ``layout``, ``instruction`` and ``visual`` options of
:class:`~vla_cl.envs.registry.EnvOptions`, which the evaluation's generalisation axes are made of.

Layouts. A task's *training grid* is a square lattice of positions, ``GRID_STEP`` apart, over the region
where the simulator draws the manipulated object. With ``layout="grid"`` (the default, used by
demonstrations and fine-tuning) every episode starts that object on a grid point chosen by the episode's
seed; with ``layout="off_grid"`` it starts at the centre of a grid cell, the point farthest from every
grid point (``GRID_STEP / sqrt(2)`` away), so no training episode ever started there; ``layout="random"``
keeps the simulator's own continuous draw. Objects that the task places relative to the manipulated one
(a push target, the bin of a ball) move with it, so the task itself is unchanged; everything else the
simulator drew (orientations, independently placed goals, the robot's start) stays as drawn.

Random streams. Each variation draws from its own generator seeded by (episode seed, stream), so two
environments that differ only in one option start the same seed from the same positions: the
in-distribution and instruction axes of an evaluation are paired episode by episode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

GRID_STEP = 0.05  # m between neighbouring training-grid positions
LAYOUT_STREAM, INSTRUCTION_STREAM, VISUAL_STREAM = 11, 12, 13


def episode_rng(seed: int | None, stream: int, fallback: np.random.Generator) -> np.random.Generator:
    """The generator for one kind of variation of the episode started from ``seed`` (``fallback``, the
    env's own generator, for unseeded resets)."""
    return fallback if seed is None else np.random.default_rng([int(seed), stream])


class Placing(Protocol):
    """How a task puts its objects where ``layout`` says, in two steps around the backend's reset."""

    def reset_options(self, sim: Any, layout: str, seed: int | None, rng: np.random.Generator
                      ) -> tuple[dict[str, Any], str | None]:
        """Options for the backend's reset, and the start's name (None: a continuous draw)."""

    def apply(self, sim: Any, layout: str, rng: np.random.Generator) -> bool:
        """Move the freshly reset scene's objects; whether anything moved."""


@dataclasses.dataclass(frozen=True)
class Region:
    """The rectangle (m, world frame) over which a task draws its manipulated object's xy position."""

    x: tuple[float, float]
    y: tuple[float, float]

    def _axis(self, bounds: tuple[float, float], step: float) -> np.ndarray:
        lo, hi = bounds
        n = max(1, round((hi - lo) / step))
        return lo + step * np.arange(n + 1)

    def grid_points(self, step: float = GRID_STEP) -> np.ndarray:
        """(N, 2) training-grid positions: the lattice ``step`` apart from the region's low corner."""
        xs, ys = self._axis(self.x, step), self._axis(self.y, step)
        return np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)

    def off_grid_points(self, step: float = GRID_STEP) -> np.ndarray:
        """(M, 2) held-out positions: the centres of the grid's cells (of a row of cells where the region
        is one step wide)."""
        xs, ys = self._axis(self.x, step), self._axis(self.y, step)
        mid = lambda a: (a[:-1] + a[1:]) / 2 if len(a) > 1 else a
        return np.stack(np.meshgrid(mid(xs), mid(ys), indexing="ij"), -1).reshape(-1, 2)

    def points(self, layout: str) -> np.ndarray:
        if layout == "grid":
            return self.grid_points()
        if layout == "off_grid":
            return self.off_grid_points()
        raise ValueError(f"layout {layout!r} has no fixed set of positions (grid or off_grid)")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a ManiSkill task's manipulated object starts under ``layout``: ``anchor`` (the backend env's
    attribute holding that actor) is moved onto a point of ``region``'s grid (or off it), and the actors
    named in ``followers`` move by the same offset."""

    anchor: str
    region: Region
    followers: tuple[str, ...] = ()

    # The wrapper's placement interface (vla_cl.envs.wrapper.VLAEnv): nothing to ask of the backend's reset
    # (the simulator draws as usual, and the episode's other draws keep it continuous: no named start) ...
    def reset_options(self, sim: Any, layout: str, seed: int | None, rng: np.random.Generator
                      ) -> tuple[dict[str, Any], str | None]:
        return {}, None

    # ... then the drawn scene is moved.
    def apply(self, sim: Any, layout: str, rng: np.random.Generator) -> bool:
        """Move the objects for this episode; returns True (the scene changed)."""
        import torch

        points = self.region.points(layout)
        target = points[rng.integers(len(points))]
        anchor = getattr(sim, self.anchor)
        offset = torch.as_tensor(target, dtype=anchor.pose.p.dtype) - anchor.pose.p[0, :2]
        for name in (self.anchor, *self.followers):
            shift_actor(getattr(sim, name), offset)
        return True


def shift_actor(actor: Any, offset_xy: Any) -> None:
    """Translate a ManiSkill actor by ``offset_xy`` (m) in the table plane, keeping its orientation."""
    from mani_skill.utils.structs.pose import Pose

    pose = actor.pose
    position = pose.p.clone()
    position[..., :2] += offset_xy.to(position)
    actor.set_pose(Pose.create_from_pq(position, pose.q))


class LightRetinter:
    """Redraws a ManiSkill scene's lighting per episode: the ambient light is scaled by a factor in
    [0.4, 1.6] and each directional light gets a random tint and intensity (each channel scaled by a factor
    in [0.5, 1.5]). The scene's original lights are remembered, so episodes do not compound."""

    def __init__(self) -> None:
        self._original: dict[str, Any] | None = None

    @staticmethod
    def _lights(sim: Any) -> list:
        import sapien

        kind = sapien.render.RenderDirectionalLightComponent
        return [c for sub in sim.scene.sub_scenes for e in sub.entities for c in e.components if isinstance(c, kind)]

    def retint(self, sim: Any, rng: np.random.Generator) -> None:
        subs, lights = sim.scene.sub_scenes, self._lights(sim)
        if self._original is None:
            self._original = {"ambient": [np.array(s.ambient_light) for s in subs],
                              "lights": [np.array(light.color) for light in lights]}
        scale = rng.uniform(0.4, 1.6)
        for sub, ambient in zip(subs, self._original["ambient"]):
            sub.ambient_light = (ambient * scale).tolist()
        for light, original in zip(lights, self._original["lights"]):
            light.color = (original * rng.uniform(0.5, 1.5, size=3)).tolist()


class TableRestyler(LightRetinter):
    """The ``visual="shifted"`` appearance of a ManiSkill table-top scene, drawn per episode: the table
    loses its wood texture and takes a random colour, and the lights are retinted (:class:`LightRetinter`)."""

    @staticmethod
    def _parts(sim: Any) -> list:
        import sapien

        body = sim.table_scene.table._objs[0].find_component_by_type(sapien.render.RenderBodyComponent)
        return [part for shape in body.render_shapes for part in getattr(shape, "parts", [shape])]

    def __call__(self, sim: Any, rng: np.random.Generator) -> None:
        colour = rng.uniform(0.05, 0.95, size=3)
        for part in self._parts(sim):
            material = part.material
            material.base_color_texture = None
            material.base_color = [*colour.tolist(), 1.0]
        self.retint(sim, rng)
