"""ManiSkill's end-effector delta-pose controller and Panda grasp check, computed with numpy instead of torch.

On the CPU simulator with one env, ManiSkill 3 does per-step bookkeeping with batched torch code on
1-row tensors. Measured here on PickCube (4.6 ms per step): the ``pd_ee_delta_pose`` controller's pose
algebra took about 3 ms (the inverse kinematics itself, SAPIEN's Pinocchio model, 0.15 ms), and the Panda's
``is_grasping`` (called by the success check and the reward) about 1 ms, scanning the scene's contacts
twice. :func:`accelerate` replaces both, on one env, with the same computation on sapien/numpy values.

Controller (about 0.25 ms):

    target = (delta xyz, XYZ-Euler delta rotation applied in the base frame) * (end effector in the base frame)
    joint targets = Pinocchio IK from the current joint positions (100 iterations; the current positions
                    when it does not converge, as ManiSkill does)

The result agrees with ManiSkill's own controller to float32 rounding (joint targets within ~1e-5 rad;
``tests/test_fast_control.py`` compares them on random states and actions). It applies only to the
configuration used here (CPU simulation, one env, root-frame translation with root-aligned rotation,
normalised actions, no target accumulation, no interpolation); any other controller is left untouched.

Grasp check: the same rule as ManiSkill's ``Panda.is_grasping`` (each finger's total contact force with the
object of at least ``min_force`` N, at most ``max_angle`` degrees from the direction that opens that
finger) from one pass over the contacts, in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ACCELERATED = "_vla_cl_accelerated"


def _supported(controller: Any) -> bool:
    config = getattr(controller, "config", None)
    return (type(controller).__name__ == "PDEEPoseController" and not controller.scene.gpu_sim_enabled
            and controller.scene.num_envs == 1 and config.frame == "root_translation:root_aligned_body_rotation"
            and config.use_delta and not config.use_target and not config.interpolate and config.normalize_action)


def accelerate(sim: Any) -> bool:
    """Give ``sim``'s end-effector delta-pose arm controller the numpy ``set_action`` (see the module
    docstring). Idempotent; call it after every reset that may rebuild the agent (``reconfigure``).
    Returns whether the controller is (now) accelerated."""
    controllers = getattr(getattr(sim.agent, "controller", None), "controllers", {}) or {}
    arm = controllers.get("arm")
    if arm is None or not _supported(arm):
        return False
    if getattr(arm, ACCELERATED, False):
        return True
    arm.set_action = _FastEEDeltaPose(arm)
    setattr(arm, ACCELERATED, True)
    if type(sim.agent).__name__ == "Panda":
        sim.agent.is_grasping = _FastPandaGrasp(sim.agent)
    return True


class _FastEEDeltaPose:
    """``set_action`` of one PDEEPoseController, in numpy (bound to that controller's objects)."""

    def __init__(self, controller: Any):
        import torch
        from transforms3d.euler import euler2quat
        from transforms3d.quaternions import qmult

        self.controller, self.torch, self.euler2quat, self.qmult = controller, torch, euler2quat, qmult
        kinematics = controller.kinematics
        self.pmodel, self.end_link = kinematics.pmodel, kinematics.end_link_idx
        self.qmask = kinematics.qmask.cpu().numpy()
        self.active = kinematics.pmodel_active_joint_indices.cpu().numpy()
        self.controlled = kinematics.pmodel_controlled_joint_indices.cpu().numpy()
        self.root, self.ee = controller.root_link._objs[0], controller.ee_link._objs[0]
        self.articulation = controller.articulation._objs[0]
        self.low = controller.action_space_low.cpu().numpy().astype(np.float64)[:3]
        self.high = controller.action_space_high.cpu().numpy().astype(np.float64)[:3]
        self.rot_scale = float(controller.config.rot_lower)

    def __call__(self, action: Any) -> None:
        import sapien

        c = self.controller
        a = np.asarray(action.cpu().numpy() if hasattr(action, "cpu") else action, dtype=np.float64).reshape(-1)
        if a.shape != (6,):
            raise ValueError(f"the arm controller takes a (1, 6) action, got {np.shape(action)}")
        # ManiSkill's _clip_and_scale_action: xyz clipped to [-1, 1] and mapped onto [low, high]; the rotation
        # rescaled to norm 1 when longer, then multiplied by rot_lower.
        position = self.low + (np.clip(a[:3], -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)
        rotation = a[3:6]
        norm = float(np.linalg.norm(rotation))
        rotation = (rotation / norm if norm > 1 else rotation) * self.rot_scale
        c._step = 0
        c._start_qpos = c.qpos
        ee_at_base = self.root.pose.inv() * self.ee.pose
        delta = self.euler2quat(*rotation, "rxyz")  # intrinsic XYZ: R = Rx @ Ry @ Rz, as ManiSkill's "XYZ"
        target = sapien.Pose(ee_at_base.p + position, self.qmult(delta, ee_at_base.q))
        q0 = self.articulation.get_qpos()[self.active]
        result, success, _ = self.pmodel.compute_inverse_kinematics(
            self.end_link, target, initial_qpos=q0, active_qmask=self.qmask, max_iterations=100)
        if success:
            targets = self.torch.as_tensor(result[self.controlled][None], dtype=c._start_qpos.dtype)
        else:
            targets = c._start_qpos
        c._target_qpos = targets
        c.set_drive_targets(targets)


class _FastPandaGrasp:
    """``is_grasping(object, min_force=0.5, max_angle=85)`` of one Panda on the CPU simulator (see the module
    docstring); returns a (1,) bool tensor like ManiSkill's."""

    def __init__(self, agent: Any):
        import torch

        self.agent, self.torch = agent, torch
        self.left, self.right = agent.finger1_link._objs[0], agent.finger2_link._objs[0]
        self.timestep = float(agent.scene.px.timestep)

    def _forces(self, target: Any) -> tuple[np.ndarray, np.ndarray]:
        """Total contact force (N) on each finger from ``target``, as ManiSkill sums it (impulse / dt, the
        impulse counted on the pair's first body)."""
        left_entity, right_entity = self.left.entity, self.right.entity
        totals = {left_entity: np.zeros(3), right_entity: np.zeros(3)}
        for contact in self.agent.scene.px.get_contacts():
            a, b = contact.bodies[0].entity, contact.bodies[1].entity
            if b == target and a in totals:
                sign = 1.0
                finger = a
            elif a == target and b in totals:
                sign = -1.0
                finger = b
            else:
                continue
            for point in contact.points:
                totals[finger] += sign * np.asarray(point.impulse, dtype=np.float64)
        return totals[left_entity] / self.timestep, totals[right_entity] / self.timestep

    @staticmethod
    def _angle(direction: np.ndarray, force: np.ndarray) -> float:
        norms = [np.linalg.norm(v) for v in (direction, force)]
        unit = [v / n if n >= 1e-6 else v for v, n in zip((direction, force), norms)]
        return float(np.degrees(np.arccos(np.clip(np.dot(unit[0], unit[1]), -1.0, 1.0))))

    def __call__(self, object: Any, min_force: float = 0.5, max_angle: float = 85) -> Any:
        left_force, right_force = self._forces(object._bodies[0].entity)
        # the direction that opens each finger: the left link's +y axis, the right link's -y axis
        left_open = self.left.entity_pose.to_transformation_matrix()[:3, 1]
        right_open = -self.right.entity_pose.to_transformation_matrix()[:3, 1]
        grasping = all(np.linalg.norm(force) >= min_force and self._angle(direction, force) <= max_angle
                       for direction, force in ((left_open, left_force), (right_open, right_force)))
        return self.torch.tensor([grasping])
