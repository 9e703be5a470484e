"""The action convention: SimplerEnv's post-processing of OpenVLA actions, from the model's 7 numbers to
the env's 7-D action, and back.

It is the action space's convention, not the simulator's: policies convert with it (an OpenVLA checkpoint
picks the conversion by its statistics) and the envs document their actions by it, so it sits below both
layers (numpy only) where either may import it.

OpenVLA decodes 7 numbers per step. After un-normalisation with the checkpoint's statistics
(:meth:`vla_cl.tokenizer.NormStats.unnormalize`; dataset key ``bridge_orig`` for WidowX,
``fractal20220817_data`` for the Google robot) they are::

    [0:3] xyz delta (m)   [3:6] roll, pitch, yaw delta (rad)   [6] gripper openness in [0, 1] (1 = open)

SimplerEnv's OpenVLA evaluation turns them into the env action as follows (``action_scale`` = 1):

* xyz passes unchanged;
* the Euler angles are static-frame x-y-z angles (transforms3d's default axes ``"sxyz"``, i.e.
  R = Rz(yaw) Ry(pitch) Rx(roll)), converted to an axis-angle vector axis * angle
  (:func:`euler_to_axis_angle`). We return angle in [0, pi]; SimplerEnv's ``euler2axangle`` gives the
  same vector below pi (always the case for ``bridge_orig`` actions, whose Euler deltas stay within
  +-0.21 rad) and may give 2 pi - angle about the opposite axis above it: the same rotation;
* Bridge (WidowX) gripper: ``2 * (g > 0.5) - 1``, so +1 opens and -1 closes (:func:`bridge_gripper`);
* Google-robot gripper: relative, ``previous g - current g`` (0 on an episode's first step; +1 means
  close in that robot's convention), and "sticky": once its magnitude exceeds 0.5 the value is
  repeated for 15 steps, ignoring the model meanwhile (:class:`GoogleRobotGripper`).

The way back (:func:`bridge_action_inverse`, for learning from demonstrations recorded in the env's
convention with a ``bridge_orig`` checkpoint): xyz as is, the axis-angle vector to static x-y-z Euler
angles, the gripper's +1 / -1 to openness 1 / 0 (what the Bridge data holds for open / closed). It is exact
for the rotation (``bridge_action(bridge_action_inverse(a)) == a`` up to float rounding) and for a gripper
of exactly +-1.

Every function here is pure except :class:`GoogleRobotGripper`, which carries the episode's state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STICKY_GRIPPER_STEPS = 15  # SimplerEnv's repeat count for the Google robot (the Bridge setup uses 1)
GRIPPER_THRESHOLD = 0.5


def _as_actions(raw: Any, name: str = "raw action") -> np.ndarray:
    actions = np.asarray(raw, dtype=np.float64)
    if actions.ndim == 0 or actions.shape[-1] != 7:
        raise ValueError(
            f"{name} must have 7 entries (xyz, roll, pitch, yaw, gripper) in its last axis, "
            f"got shape {actions.shape}"
        )
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{name} has non-finite entries: {actions}")
    return actions


def euler_to_axis_angle(rpy: Any) -> np.ndarray:
    """Static x-y-z Euler angles (..., 3) -> axis-angle vectors (..., 3), angle in [0, pi].

    Goes through the unit quaternion q = qz(yaw) qy(pitch) qx(roll) with its scalar part made
    non-negative; then angle = 2 atan2(|v|, w), which stays accurate near 0 and near pi.
    """
    rpy = np.asarray(rpy, dtype=np.float64)
    if rpy.ndim == 0 or rpy.shape[-1] != 3:
        raise ValueError(
            f"Euler angles must have 3 entries (roll, pitch, yaw) in the last axis, got {rpy.shape}"
        )
    half = rpy / 2
    cr, cp, cy = np.cos(half[..., 0]), np.cos(half[..., 1]), np.cos(half[..., 2])
    sr, sp, sy = np.sin(half[..., 0]), np.sin(half[..., 1]), np.sin(half[..., 2])
    w = cy * cp * cr + sy * sp * sr
    v = np.stack(
        [cy * cp * sr - sy * sp * cr, cy * sp * cr + sy * cp * sr, sy * cp * cr - cy * sp * sr], axis=-1
    )
    sign = np.where(w < 0, -1.0, 1.0)
    w, v = w * sign, v * sign[..., None]
    norm = np.linalg.norm(v, axis=-1)
    angle = 2 * np.arctan2(norm, w)
    # angle / |v| -> 2 / w as |v| -> 0 (w -> 1 then), so small rotations need no special case beyond this.
    scale = np.where(norm > 1e-12, angle / np.maximum(norm, 1e-300), 2.0 / w)
    return v * scale[..., None]


def axis_angle_to_euler(rotvec: Any) -> np.ndarray:
    """Axis-angle vectors (..., 3) -> static x-y-z Euler angles (roll, pitch, yaw) of the same rotation, the
    inverse of :func:`euler_to_axis_angle` (pitch in [-pi/2, pi/2])."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    if rotvec.ndim == 0 or rotvec.shape[-1] != 3:
        raise ValueError(f"axis-angle vectors must have 3 entries in the last axis, got {rotvec.shape}")
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    axis = np.where(angle > 1e-12, rotvec / np.maximum(angle, 1e-300), 0.0)
    k = [axis[..., i] for i in range(3)]
    c, s = np.cos(angle[..., 0]), np.sin(angle[..., 0])
    t = 1.0 - c
    # Rodrigues: the rotation matrix's entries that the x-y-z Euler angles are read from (R = Rz Ry Rx)
    r00 = c + k[0] * k[0] * t
    r10 = k[0] * k[1] * t + k[2] * s
    r20 = k[0] * k[2] * t - k[1] * s
    r21 = k[1] * k[2] * t + k[0] * s
    r22 = c + k[2] * k[2] * t
    return np.stack([np.arctan2(r21, r22), -np.arcsin(np.clip(r20, -1.0, 1.0)), np.arctan2(r10, r00)], axis=-1)


def bridge_gripper(openness: Any) -> np.ndarray:
    """OpenVLA's gripper openness in [0, 1] -> the Bridge env's +1 (open) / -1 (close)."""
    return 2.0 * (np.asarray(openness, dtype=np.float64) > GRIPPER_THRESHOLD) - 1.0


def bridge_action(raw: Any) -> np.ndarray:
    """Un-normalised OpenVLA action(s) (..., 7) -> Bridge env action(s) (..., 7), float32."""
    actions = _as_actions(raw)
    out = np.concatenate(
        [actions[..., :3], euler_to_axis_angle(actions[..., 3:6]), bridge_gripper(actions[..., 6:7])], axis=-1
    )
    return out.astype(np.float32)


def bridge_action_inverse(env_actions: Any) -> np.ndarray:
    """Bridge env action(s) (..., 7) -> the un-normalised OpenVLA action(s) :func:`bridge_action` maps onto
    them (see the module docstring), float32."""
    actions = _as_actions(env_actions, "env action")
    openness = (actions[..., 6:7] > 0).astype(np.float64)
    out = np.concatenate([actions[..., :3], axis_angle_to_euler(actions[..., 3:6]), openness], axis=-1)
    return out.astype(np.float32)


class GoogleRobotGripper:
    """SimplerEnv's relative, sticky gripper command for Google-robot checkpoints (one per episode).

    Call :meth:`reset` when an episode starts, then call the object once per step with the model's
    openness; it returns the command for the Google-robot env (+1 close, -1 open, 0 hold).
    """

    def __init__(self, repeat: int = STICKY_GRIPPER_STEPS):
        if repeat < 1:
            raise ValueError(f"invalid value for repeat: {repeat!r} (allowed: an integer >= 1)")
        self.repeat = repeat
        self.reset()

    def reset(self) -> None:
        self.previous: float | None = None
        self.sticky_on = False
        self.sticky_value = 0.0
        self.sticky_steps = 0  # steps the current sticky value has been sent

    def __call__(self, openness: float) -> float:
        openness = float(openness)
        if not np.isfinite(openness):
            raise ValueError(f"gripper openness must be finite, got {openness}")
        relative = 0.0 if self.previous is None else self.previous - openness
        self.previous = openness  # tracked even while sticky, so a held command does not re-trigger
        if not self.sticky_on and abs(relative) > GRIPPER_THRESHOLD:
            self.sticky_on, self.sticky_value = True, relative
        if self.sticky_on:
            self.sticky_steps += 1
            relative = self.sticky_value
            if self.sticky_steps == self.repeat:
                self.sticky_on, self.sticky_value, self.sticky_steps = False, 0.0, 0
        return relative


class GoogleRobotActions:
    """Un-normalised OpenVLA actions (7,) -> Google-robot env actions (7,), one object per episode."""

    def __init__(self, repeat: int = STICKY_GRIPPER_STEPS):
        self.gripper = GoogleRobotGripper(repeat)

    def reset(self) -> None:
        self.gripper.reset()

    def __call__(self, raw: Any) -> np.ndarray:
        action = _as_actions(raw)
        if action.shape != (7,):
            raise ValueError(
                f"one action of shape (7,) per call (the gripper is stateful), got {action.shape}"
            )
        rotation = euler_to_axis_angle(action[3:6])
        return np.array([*action[:3], *rotation, self.gripper(action[6])], dtype=np.float32)


# Datasets whose actions a policy must convert before a SimplerEnv scene can execute them, keyed by the
# statistics' name in an OpenVLA checkpoint (its ``unnorm_key``). The Google robot's conversion carries
# per-episode state (``GoogleRobotActions``) and its scenes are not among this library's tasks.
CONVERSIONS = {"bridge_orig": bridge_action}
INVERSES = {"bridge_orig": bridge_action_inverse}


def conversion_for(dataset: str | None):
    """The post-processing SimplerEnv applies to actions decoded with ``dataset``'s statistics, or None."""
    return CONVERSIONS.get(dataset or "")


def inverse_for(dataset: str | None):
    """The inverse of :func:`conversion_for`'s conversion (env actions -> the model's), or None."""
    return INVERSES.get(dataset or "")
