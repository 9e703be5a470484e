"""Privileged scripted experts for the Panda tasks (no motion planner).

Each expert reads the true scene from the backend (object, goal and hand poses), runs a small phase
machine and returns a PHYSICAL 7-D action in the same convention as the policies (xyz delta in m,
world-frame rotation delta in rad, gripper +1 open / -1 close), so its actions can be used as
demonstrations as they are.

    expert = make_expert("maniskill/PickCube-v1")
    obs, info = env.reset(seed=0); expert.reset(env)
    action = expert.act(env)

Success rates, measured with ``vla_cl.evaluation.evaluate(policy="expert")`` over reset seeds 0..49 (50
episodes per task), state observations, default episode lengths, objects on the training grid
(``layout="grid"``, the default) and off it (``off_grid``); ``tests/test_evaluation.py`` checks every expert
through the evaluation runner against the demonstration recorder:

    task                  grid     off grid   mean steps (successes)   longest   episode limit
    PickCube-v1           50/50    50/50      23.6                     34        50
    PickCubeLowGoal-v1    50/50    50/50      20.9                     32        50
    PickCubeLowGoal-v2    50/50    50/50      23.2                     34        50
    PushCube-v1           50/50    50/50      15.0                     18        50
    PullCube-v1           49/50    50/50      15.4                     18        50
    StackCube-v1          47/50    47/50      32.5                     47        50
    PlaceSphere-v1        49/50    50/50      26.6                     42        50
    PokeCube-v1           47/50    50/50      21.4                     27        50

No expert (yet) for LiftPegUpright-v1: standing the peg up needs a ~90 degree turn of the hand, but
``pd_ee_delta_pose`` turns it ~0.04 rad per step and its IK stalls near 0.9 rad, which does not fit in 50
steps. Nor for PullCubeTool-v1: the hook must reach past cubes up to x = 0.25 m, the hand (pointing
down) stalls near x = 0.1 m, and a tool gripped at its end droops and knocks the cube away. The Bridge
(WidowX) scenes' experts are in :mod:`vla_cl.envs.bridge_experts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vla_cl.envs.panda import OBJECT_AND_GOAL, PANDA_STEP_LIMIT, pos, quat
from vla_cl.envs.rotations import matrix_from_quat, wrap_angle
from vla_cl.envs.wrapper import GRIPPER_CLOSE, GRIPPER_OPEN

DOWN = np.array([0.0, 0.0, 1.0])


def toward(target: np.ndarray, current: np.ndarray, gain: float = 2.0, limit: float = PANDA_STEP_LIMIT):
    """Proportional step towards ``target`` whose length is at most ``limit`` (keeps the direction)."""
    delta = gain * (np.asarray(target, np.float64) - np.asarray(current, np.float64))
    norm = float(np.linalg.norm(delta))
    return delta if norm <= limit else delta * (limit / norm)


def yaw_of(q: np.ndarray) -> float:
    """Heading of a body's x axis in the world xy plane."""
    x_axis = matrix_from_quat(q)[:, 0]
    return float(np.arctan2(x_axis[1], x_axis[0]))


def square_yaw_error(hand_q: np.ndarray, obj_q: np.ndarray) -> float:
    """The smallest yaw turn (rad) that lines the gripper up with a square object's faces, in (-pi/4, pi/4]."""
    error = wrap_angle(yaw_of(obj_q) - yaw_of(hand_q))
    return float((error + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def action(translation=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0), gripper: float = GRIPPER_OPEN) -> np.ndarray:
    limit = PANDA_STEP_LIMIT
    out = np.concatenate([np.clip(translation, -limit, limit), np.clip(rotation, -limit, limit), [gripper]])
    return out.astype(np.float32)


class Expert:
    """A scripted controller with a phase machine; subclasses implement :meth:`step`."""

    def __init__(self, env_id: str):
        self.env_id = env_id
        self.phase = "start"
        self.phase_steps = 0

    def reset(self, env: Any) -> None:
        self.phase = "start"
        self.phase_steps = 0

    def go(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def act(self, env: Any) -> np.ndarray:
        out = self.step(env.sim)
        self.phase_steps += 1
        return out

    def step(self, sim: Any) -> np.ndarray:
        raise NotImplementedError

    # Scene readings shared by the experts.
    def hand(self, sim) -> tuple[np.ndarray, np.ndarray]:
        return pos(sim.agent.tcp).astype(np.float64), quat(sim.agent.tcp)

    def object_and_goal(self, sim) -> tuple[np.ndarray, np.ndarray]:
        obj, goal = OBJECT_AND_GOAL[self.env_id](sim)
        return obj.astype(np.float64), goal.astype(np.float64)


class PickAndPlaceExpert(Expert):
    """Grasp the object from above (yaw-aligned), carry it to the goal; optionally release it there.

    ``release``: open the gripper once the object is within ``release_xy`` (horizontally) and
    ``release_z`` (vertically) of the goal (StackCube, PlaceSphere); ``hover``: height above the goal to
    carry the object at before lowering it (0 = go straight); ``square``: turn the hand to the object's
    faces before grasping; ``hover_xy``: how well the object must be centred over the goal before it
    is lowered.
    """

    def __init__(self, env_id: str, *, grasped: Callable[[Any], bool], release: bool = False,
                 hover: float = 0.0, hover_xy: float = 0.01, square: bool = True, release_xy: float = 0.005,
                 release_z: float = 0.005):
        super().__init__(env_id)
        self.grasped = grasped
        self.release = release
        self.hover = hover
        self.hover_xy = hover_xy
        self.square = square
        self.release_xy = release_xy
        self.release_z = release_z

    def object_quat(self, sim) -> np.ndarray:
        raise NotImplementedError

    def turn(self, sim, hand_q) -> np.ndarray:
        if not self.square:
            return np.zeros(3)
        return np.array([0.0, 0.0, np.clip(square_yaw_error(hand_q, self.object_quat(sim)), -0.1, 0.1)])

    def step(self, sim) -> np.ndarray:
        hand, hand_q = self.hand(sim)
        obj, goal = self.object_and_goal(sim)
        if self.phase == "start":
            self.go("above")
        if self.phase == "above":
            target = obj + np.array([0.0, 0.0, 0.06])
            if np.linalg.norm(target - hand) < 0.015 and abs(self.turn(sim, hand_q)[2]) < 0.05:
                self.go("descend")
            return action(toward(target, hand), self.turn(sim, hand_q), GRIPPER_OPEN)
        if self.phase == "descend":
            target = obj.copy()
            if np.linalg.norm(target - hand) < 0.008 or self.phase_steps > 20:
                self.go("close")
            return action(toward(target, hand), self.turn(sim, hand_q), GRIPPER_OPEN)
        if self.phase == "close":
            if self.phase_steps >= 3:
                self.go("carry" if self.grasped(sim) else "above")
            return action(gripper=GRIPPER_CLOSE)
        if self.phase == "carry":
            if not self.grasped(sim) and self.phase_steps > 2:
                self.go("above")
                return action(gripper=GRIPPER_OPEN)
            carry_to = goal + np.array([0.0, 0.0, self.hover])
            if self.hover and np.linalg.norm((carry_to - obj)[:2]) > self.hover_xy:
                carry_to[2] = max(carry_to[2], obj[2])
                return action(toward(carry_to + (hand - obj), hand), gripper=GRIPPER_CLOSE)
            offset = goal - obj
            if self.release and np.linalg.norm(offset[:2]) < self.release_xy and abs(offset[2]) < self.release_z:
                self.go("open")
            return action(toward(goal + (hand - obj), hand, gain=1.5), gripper=GRIPPER_CLOSE)
        if self.phase == "open":
            if self.phase_steps >= 3:
                self.go("retreat")
            return action(gripper=GRIPPER_OPEN)
        # retreat: lift the open hand straight up and stay still
        return action(toward(np.array([hand[0], hand[1], obj[2] + 0.08]), hand), gripper=GRIPPER_OPEN)


class PickCubeExpert(PickAndPlaceExpert):
    def __init__(self, env_id: str):
        super().__init__(env_id, grasped=lambda sim: bool(sim.agent.is_grasping(sim.cube)[0]))

    def object_quat(self, sim):
        return quat(sim.cube)


class StackCubeExpert(PickAndPlaceExpert):
    def __init__(self, env_id: str):
        super().__init__(env_id, grasped=lambda sim: bool(sim.agent.is_grasping(sim.cubeA)[0]),
                         release=True, hover=0.03)

    def object_quat(self, sim):
        return quat(sim.cubeA)


class PlaceSphereExpert(PickAndPlaceExpert):
    def __init__(self, env_id: str):
        super().__init__(env_id, grasped=lambda sim: bool(sim.agent.is_grasping(sim.obj)[0]),
                         release=True, hover=0.03, hover_xy=0.005, square=False,
                         # the fingers touch the bin's rim ~1 cm above the rest point; the dropped ball centres itself
                         release_xy=0.008, release_z=0.02)


class PushPullExpert(Expert):
    """Push (``direction`` +1) or pull (-1) the cube along x with a closed gripper until it is on target.

    The hand goes above the side of the cube it must press on, lowers to the table, then drives through
    the cube towards the target centre.
    """

    def __init__(self, env_id: str, direction: float):
        super().__init__(env_id)
        self.direction = direction

    def step(self, sim) -> np.ndarray:
        hand, _ = self.hand(sim)
        obj, goal = self.object_and_goal(sim)
        contact = obj - np.array([self.direction * 0.045, 0.0, 0.0])
        contact[2] = 0.02
        if self.phase == "start":
            self.go("above")
        if self.phase == "above":
            target = contact + np.array([0.0, 0.0, 0.08])
            if np.linalg.norm((target - hand)[:2]) < 0.01:
                self.go("lower")
            return action(toward(target, hand), gripper=GRIPPER_CLOSE)
        if self.phase == "lower":
            if abs(contact[2] - hand[2]) < 0.01:
                self.go("drive")
            return action(toward(contact, hand), gripper=GRIPPER_CLOSE)
        # drive the cube's centre onto the target centre, keeping the hand low and behind the cube
        push_to = goal + (contact - obj)
        push_to[2] = 0.02
        step = toward(push_to, hand, gain=1.0, limit=0.05)
        return action(step, gripper=GRIPPER_CLOSE)


class PokeCubeExpert(Expert):
    """Grasp the peg near its tail, line its head up behind the cube, and push the cube onto the target."""

    PEG_HALF_LENGTH = 0.12
    GRIP_OFFSET = 0.06  # grasp this far behind the peg's centre, leaving the head free
    CARRY_Z = 0.035  # peg centre height while carrying (it rests at 0.025)

    def peg_axis(self, sim) -> np.ndarray:
        axis = matrix_from_quat(quat(sim.peg))[:, 0]
        return axis / max(np.linalg.norm(axis), 1e-9)

    def step(self, sim) -> np.ndarray:
        hand, hand_q = self.hand(sim)
        peg, cube = pos(sim.peg).astype(np.float64), pos(sim.cube).astype(np.float64)
        goal = pos(sim.goal_region).astype(np.float64)
        axis = self.peg_axis(sim)
        head = peg + self.PEG_HALF_LENGTH * axis
        grip = peg - self.GRIP_OFFSET * axis
        turn = np.array([0.0, 0.0, np.clip(square_yaw_error(hand_q, quat(sim.peg)), -0.1, 0.1)])
        if self.phase == "start":
            self.go("above")
        if self.phase == "above":
            target = grip + np.array([0.0, 0.0, 0.06])
            if np.linalg.norm(target - hand) < 0.015 and abs(turn[2]) < 0.05:
                self.go("descend")
            return action(toward(target, hand), turn, GRIPPER_OPEN)
        if self.phase == "descend":
            if np.linalg.norm(grip - hand) < 0.008 or self.phase_steps > 20:
                self.go("close")
            return action(toward(grip, hand), turn, GRIPPER_OPEN)
        if self.phase == "close":
            if self.phase_steps >= 3:
                self.go("line_up")
            return action(gripper=GRIPPER_CLOSE)
        # Move the hand so that the head goes where it should: first just behind the cube, on the line
        # from the cube to the target; then through to where the cube would sit on the target centre.
        direction = goal[:2] - cube[:2]
        direction /= max(np.linalg.norm(direction), 1e-9)
        behind = np.r_[cube[:2] - (0.02 + 0.015) * direction, self.CARRY_Z]
        if self.phase == "line_up":
            if np.linalg.norm((behind - head)[:2]) < 0.01:
                self.go("push")
            return action(toward(hand + behind - head, hand), gripper=GRIPPER_CLOSE)
        if np.linalg.norm((goal - cube)[:2]) < 0.03:  # the target's radius is 0.05
            return action(gripper=GRIPPER_CLOSE)  # on target: stand still (success needs a static robot)
        through = np.r_[goal[:2] - (0.02 + 0.005) * direction, self.CARRY_Z]
        lateral = behind - head  # keep the head on the cube's line while pushing
        lateral[:2] -= np.dot(lateral[:2], direction) * direction
        return action(toward(hand + through - head + lateral, hand, gain=1.0, limit=0.05), gripper=GRIPPER_CLOSE)


EXPERTS: dict[str, Callable[[], Expert]] = {
    "maniskill/PickCube-v1": lambda: PickCubeExpert("PickCube-v1"),
    "maniskill/PickCubeLowGoal-v1": lambda: PickCubeExpert("PickCubeLowGoal-v1"),
    "maniskill/PickCubeLowGoal-v2": lambda: PickCubeExpert("PickCubeLowGoal-v2"),
    "maniskill/StackCube-v1": lambda: StackCubeExpert("StackCube-v1"),
    "maniskill/PlaceSphere-v1": lambda: PlaceSphereExpert("PlaceSphere-v1"),
    "maniskill/PushCube-v1": lambda: PushPullExpert("PushCube-v1", direction=1.0),
    "maniskill/PullCube-v1": lambda: PushPullExpert("PullCube-v1", direction=-1.0),
    "maniskill/PokeCube-v1": lambda: PokeCubeExpert("PokeCube-v1"),
    **{f"simpler/{name}": (lambda env_id=env_id: _bridge_expert(env_id)) for name, env_id in (
        ("widowx_carrot_on_plate", "PutCarrotOnPlateInScene-v1"),
        ("widowx_spoon_on_towel", "PutSpoonOnTableClothInScene-v1"),
        ("widowx_stack_cube", "StackGreenCubeOnYellowCubeBakedTexInScene-v1"),
        ("widowx_put_eggplant_in_basket", "PutEggplantInBasketScene-v1"))},
}


def _bridge_expert(env_id: str) -> Expert:
    from vla_cl.envs.bridge_experts import make_bridge_expert

    return make_bridge_expert(env_id)


def has_expert(task_id: str) -> bool:
    return task_id in EXPERTS


def make_expert(task_id: str) -> Expert:
    if task_id not in EXPERTS:
        raise ValueError(f"no scripted expert for {task_id!r}; experts exist for: {', '.join(sorted(EXPERTS))}")
    return EXPERTS[task_id]()


class ExpertPolicy:
    """The experts as a batched policy for :func:`vla_cl.envs.vector.rollout`: one expert per env.

    Experts read the scene, so they need the envs in this process: a :class:`VLAEnv` or a
    ``SyncVectorEnv`` of them (not an ``AsyncVectorEnv``, whose scenes live in worker processes).
    """

    def __init__(self, task_id: str, env: Any):
        import gymnasium as gym

        if isinstance(env, gym.vector.AsyncVectorEnv):
            raise TypeError("scripted experts read the scene and cannot drive an AsyncVectorEnv; "
                             "use one env or make_vector(..., processes=False)")
        self.envs = list(env.envs) if isinstance(env, gym.vector.SyncVectorEnv) else [env]
        self.experts = [make_expert(task_id) for _ in self.envs]

    def reset(self, slot: int) -> None:
        self.experts[slot].reset(self.envs[slot])

    def __call__(self, observations: list) -> np.ndarray:
        return np.stack([expert.act(env) for expert, env in zip(self.experts, self.envs)])
