"""Privileged scripted experts for the SimplerEnv Bridge (WidowX) scenes, in the scenes' own control mode.

One pick-and-place phase machine serves all four scenes: above the source object (the hand turned so the
fingers close across the object's narrow side), down to it, close, lift, carry over the target, lower,
open, retreat. It reads the true scene (object poses, the controller's target pose) and returns PHYSICAL
actions in the Bridge convention (xyz delta in m in the robot base frame, rotation delta in rad, gripper +1
open / -1 close), so its episodes can be recorded as demonstrations as they are.

Why the deltas are taken from the controller's target, not from the hand: the Bridge arm controller
(``arm_pd_ee_target_delta_pose_align2``) adds each delta to its previous TARGET pose. A delta computed from
where the hand is would keep adding up while the hand is blocked (pressing on the table or the object) and
drive the target far below the table; taken from the target, the target goes exactly where the expert
wants it and the hand follows as far as the physics lets it.

Action sizes stay inside the ``bridge_orig`` statistics' 1st-99th percentile range that OpenVLA tokenises
(translation <= ``STEP`` per axis, yaw <= ``TURN``), so OpenVLA can represent every demonstrated action. Only
yaw is commanded, so the rotation's convention (axis-angle or the controller's XYZ Euler angles) does not
matter: for a rotation about z alone the two are the same numbers.

Success, measured with ``vla-cl demos`` / ``evaluate(policy="expert")`` over 50 seeded episodes per scene
(seeds 0..49, state observations; the README's task table has the figures and intervals).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_cl.envs.experts import Expert
from vla_cl.envs.maniskill import to_numpy
from vla_cl.envs.rotations import matrix_from_quat
from vla_cl.envs.wrapper import GRIPPER_CLOSE, GRIPPER_OPEN

STEP = 0.025  # m per step and axis (bridge_orig's q01..q99: about -0.029..0.028 in x, -0.042..0.041 in y)
TURN = 0.2  # rad of yaw per step (bridge_orig's yaw q01..q99: about -0.21..0.20)
ABOVE = 0.06  # m above the object before going down to it
CARRY = 0.1  # m the hand lifts the object to before carrying it
FLOOR = 0.017  # m: the lowest hand height asked for (the finger tips sit 1.5 cm below the hand link)
NEAR = 0.01  # m: close enough to a waypoint to move on
CLOSE_STEPS = 4  # steps the closed gripper waits before lifting (its grip force builds up over ~0.6 s)


def limit(delta: np.ndarray, bound: float) -> np.ndarray:
    """``delta`` scaled down (direction kept) so that no component exceeds ``bound``."""
    largest = float(np.max(np.abs(delta)))
    return delta if largest <= bound else delta * (bound / largest)


def in_base(sim: Any, pose: Any) -> tuple[np.ndarray, np.ndarray]:
    """Position and quaternion (w, x, y, z) of a ManiSkill pose in the robot base frame (the actions' frame)."""
    relative = sim.agent.robot.pose.inv() * pose
    return to_numpy(relative.p).astype(np.float64), to_numpy(relative.q).astype(np.float64)


def narrow_axis(sim: Any, name: str) -> tuple[int, bool]:
    """Which of the model's horizontal axes (0 = x, 1 = y) is its narrow side, and whether it is square."""
    low, high = (np.asarray(sim.model_db[name]["bbox"][k]) for k in ("min", "max"))
    width = (high - low)[:2]
    return int(np.argmin(width)), bool(np.isclose(width[0], width[1], rtol=0.05))


def yaw_error(closing: np.ndarray, object_q: np.ndarray, axis: int, square: bool) -> float:
    """The yaw turn (rad) that lines the fingers' closing direction up with the object's narrow axis, taking
    the shortest way (a gripper closes the same either way round; a square object along either axis)."""
    target = matrix_from_quat(object_q)[:, axis]
    error = np.arctan2(target[1], target[0]) - np.arctan2(closing[1], closing[0])
    period = np.pi / 2 if square else np.pi
    return float((error + period / 2) % period - period / 2)


class BridgePickPlaceExpert(Expert):
    """Pick the scene's source object and put it on (or in) its target (see the module docstring).

    ``place_height``: how far above the target's centre the source object's centre is lowered before the
    gripper opens (the objects' half heights plus a little: the object drops the rest).
    """

    def __init__(self, env_id: str, place_height: float):
        super().__init__(env_id)
        self.place_height = place_height
        self.lift_z = CARRY  # the carrying height, set when the grasp closes

    def read(self, sim: Any) -> dict[str, np.ndarray]:
        agent = sim.agent
        hand, _ = in_base(sim, agent.robot.links_map["ee_gripper_link"].pose)
        left, _ = in_base(sim, agent.finger1_link.pose)
        right, _ = in_base(sim, agent.finger2_link.pose)
        source, source_q = in_base(sim, sim.objs[sim.source_obj_name].pose)
        target, _ = in_base(sim, sim.objs[sim.target_obj_name].pose)
        commanded = to_numpy(agent.controller.controllers["arm"]._target_pose.p).astype(np.float64)
        return {"hand": hand, "closing": left - right, "source": source, "source_q": source_q, "target": target,
                "commanded": commanded}

    def grasped(self, sim: Any) -> bool:
        return bool(sim.agent.is_grasping(sim.objs[sim.source_obj_name])[0])

    def step(self, sim: Any) -> np.ndarray:
        s = self.read(sim)
        hand, source, target, commanded = s["hand"], s["source"], s["target"], s["commanded"]
        goal, gripper, turn = commanded, GRIPPER_OPEN, 0.0
        if self.phase == "start":
            self.go("above")
        if self.phase == "above":
            axis, square = narrow_axis(sim, sim.source_obj_name)
            turn = yaw_error(s["closing"], s["source_q"], axis, square)
            goal = source + [0.0, 0.0, ABOVE]
            if np.linalg.norm(goal - hand) < NEAR and abs(turn) < 0.05:
                self.go("descend")
        if self.phase == "descend":
            goal = np.r_[source[:2], max(source[2], FLOOR)]
            if np.linalg.norm(goal - hand) < 0.006 or self.phase_steps > 6:
                self.go("close")
        if self.phase == "close":
            gripper = GRIPPER_CLOSE
            if self.phase_steps >= CLOSE_STEPS:
                self.lift_z = max(hand[2], 0.0) + CARRY
                self.go("lift")
        if self.phase == "lift":
            goal, gripper = np.r_[commanded[:2], self.lift_z], GRIPPER_CLOSE
            if abs(goal[2] - hand[2]) < NEAR:
                self.go("carry")
        held = hand - source  # where the object sits in the hand now (it may have slipped since the grasp)
        if self.phase == "carry":
            goal, gripper = np.r_[target[:2] + held[:2], self.lift_z], GRIPPER_CLOSE
            if not self.grasped(sim):  # dropped (or never held): open and try again from above
                self.go("above")
                goal, gripper = commanded, GRIPPER_OPEN
            elif np.linalg.norm((target - source)[:2]) < NEAR:
                self.go("lower")
        if self.phase == "lower":
            goal = np.r_[target[:2] + held[:2], target[2] + self.place_height + held[2]]
            gripper = GRIPPER_CLOSE
            if abs(goal[2] - hand[2]) < 0.008 or self.phase_steps > 6:
                self.go("open")
        if self.phase == "open":
            gripper = GRIPPER_OPEN
            if self.phase_steps >= 2:
                self.go("retreat")
        if self.phase == "retreat":
            goal = np.r_[commanded[:2], target[2] + CARRY]
        translation = limit(goal - commanded, STEP)
        return np.r_[translation, 0.0, 0.0, np.clip(turn, -TURN, TURN), gripper].astype(np.float32)


def make_bridge_expert(env_id: str) -> BridgePickPlaceExpert:
    # every source object is 3-4 cm tall and every target at most 1 cm: its centre 3 cm above the target's
    # leaves it resting on (or just above) the target when the fingers open
    return BridgePickPlaceExpert(env_id, place_height=0.03)
