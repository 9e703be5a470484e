"""ManiSkill3 Panda table-top tasks (no asset download) as ``maniskill/<EnvId>``.

Every task runs in ``pd_ee_delta_pose`` (its arm controller computed in numpy, :mod:`vla_cl.envs.fast_control`),
whose normalised [-1, 1] input means +-0.1 m / +-0.1 rad per step, so the physical action space is +-0.1 m, +-0.1 rad, gripper +-1 (+1 open). The controller receives
``10 * xyz``; the rotation needs more care, see :func:`panda_rotation_command`. The controller moves the
hand towards ``current pose + delta`` for one control step (20 Hz), so it covers only part of a large
delta in that step; experts use proportional gains above one for that reason.

State vectors (``obs["state"]``, float32). Relative vectors are multiplied by ``REL_SCALE`` (10) so that
they are of order one for small MLP policies. No task one-hot: instruction conditioning is the policy's job.

Pick/push/pull/stack/place family (PickCube, PickCubeLowGoal, PushCube, PullCube, StackCube,
PlaceSphere) share one layout, so that one policy reads every task the same way::

    proprioception (4):  [0:3] tcp position (m), [3] gripper width (m, 0 closed .. 0.08 open)
    privileged (+12):    [4:7] object position, [7:10] goal position,
                         [10:13] 10 * (object - tcp), [13:16] 10 * (goal - object)

where object/goal are: PickCube(LowGoal) cube / goal site; PushCube, PullCube cube / target-region
centre; StackCube red cube / the point one cube height above the green cube's centre; PlaceSphere sphere /
the sphere's resting point on the bin.

The other tasks add the tcp orientation (quaternion wxyz, w >= 0) to proprioception (8) and append::

    LiftPegUpright (+10): peg position, peg quaternion, 10 * (peg - tcp)                   = 18
    PokeCube (+22):       peg position, peg quaternion, cube position, goal position,
                          10 * (peg - tcp), 10 * (cube - peg head), 10 * (goal - cube)    = 30
    PullCubeTool (+16):   tool position, tool quaternion, cube position,
                          10 * (tool - tcp), 10 * (cube - tool)                           = 24
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from vla_cl.envs import fast_control
from vla_cl.envs.maniskill import make_maniskill, to_numpy
from vla_cl.envs.registry import EnvOptions, TaskSpec, register
from vla_cl.envs.rotations import euler_xyz_from_rotvec
from vla_cl.envs.variation import Placement, Region, TableRestyler
from vla_cl.envs.wrapper import ActionAdapter, VLAEnv

CONTROL_MODE = "pd_ee_delta_pose"
PANDA_STEP_LIMIT = 0.1  # pd_ee_delta_pose's +-1 means +-0.1 m / +-0.1 rad
REL_SCALE = 10.0
DEFAULT_SIM_FREQ = 100  # ManiSkill's default for these tasks
FACTORY = "vla_cl.envs.panda:make_panda_task"


def panda_rotation_command(rotvec: np.ndarray) -> np.ndarray:
    """A world-frame rotation delta (axis-angle, rad) -> pd_ee_delta_pose's normalised rotation input.

    ManiSkill 3.0.1 builds the delta from XYZ Euler angles, applies it in the world (root) frame, and
    scales the normalised input by ``rot_lower`` (-0.1), so a positive input turns the hand the
    negative way. Converting exactly here keeps the physical convention a true axis-angle delta.
    (The controller also rescales normalised rotations whose norm exceeds 1, i.e. 0.1 rad.)
    """
    return euler_xyz_from_rotvec(rotvec) / -PANDA_STEP_LIMIT


def panda_command(physical: np.ndarray) -> np.ndarray:
    command = np.empty(7, dtype=np.float32)
    command[:3] = physical[:3] / PANDA_STEP_LIMIT
    command[3:6] = panda_rotation_command(physical[3:6])
    command[6] = physical[6]
    return command


def panda_action_adapter() -> ActionAdapter:
    return ActionAdapter.symmetric(PANDA_STEP_LIMIT, PANDA_STEP_LIMIT, convert=panda_command)


# ---------------------------------------------------------------------- reading the scene
def _pose(actor):
    """The pose of a ManiSkill actor or link: read straight from SAPIEN on the one-env CPU simulator (what
    ManiSkill's ``.pose`` wraps into batched torch tensors, at a tenth of the cost), else through ManiSkill."""
    if actor.scene.gpu_sim_enabled or len(actor._objs) != 1:
        return actor.pose
    body = actor._objs[0]
    return body.entity_pose if hasattr(body, "entity_pose") else body.pose  # links / actors


def pos(actor) -> np.ndarray:
    return np.asarray(to_numpy(_pose(actor).p), dtype=np.float32).reshape(3)


def quat(actor) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 (q and -q are the same rotation)."""
    q = np.asarray(to_numpy(_pose(actor).q), dtype=np.float32).reshape(4)
    return -q if q[0] < 0 else q


def gripper_width(sim) -> float:
    return float(to_numpy(sim.agent.robot.get_qpos())[-2:].sum())


def tcp(sim):
    return sim.agent.tcp


# Object and goal positions for the shared family layout, per ManiSkill env id.
def _pick_cube(sim) -> tuple[np.ndarray, np.ndarray]:
    return pos(sim.cube), pos(sim.goal_site)


def _region_cube(sim) -> tuple[np.ndarray, np.ndarray]:
    return pos(sim.obj), pos(sim.goal_region)


def _stack_cube(sim) -> tuple[np.ndarray, np.ndarray]:
    target = pos(sim.cubeB) + np.array([0.0, 0.0, 2 * 0.02], dtype=np.float32)
    return pos(sim.cubeA), target


def _place_sphere(sim) -> tuple[np.ndarray, np.ndarray]:
    rest = pos(sim.bin) + np.array([0.0, 0.0, sim.radius + sim.block_half_size[0]], dtype=np.float32)
    return pos(sim.obj), rest


OBJECT_AND_GOAL: dict[str, Callable[[Any], tuple[np.ndarray, np.ndarray]]] = {
    "PickCube-v1": _pick_cube,
    "PickCubeLowGoal-v1": _pick_cube,
    "PickCubeLowGoal-v2": _pick_cube,
    "PushCube-v1": _region_cube,
    "PullCube-v1": _region_cube,
    "StackCube-v1": _stack_cube,
    "PlaceSphere-v1": _place_sphere,
}


def family_state(sim, privileged: bool, env_id: str) -> np.ndarray:
    tcp_pos = pos(tcp(sim))
    parts = [tcp_pos, [gripper_width(sim)]]
    if privileged:
        obj, goal = OBJECT_AND_GOAL[env_id](sim)
        parts += [obj, goal, REL_SCALE * (obj - tcp_pos), REL_SCALE * (goal - obj)]
    return np.concatenate(parts).astype(np.float32)


def _lift_peg(sim, tcp_pos: np.ndarray) -> list:
    peg = pos(sim.peg)
    return [peg, quat(sim.peg), REL_SCALE * (peg - tcp_pos)]


def _poke_cube(sim, tcp_pos: np.ndarray) -> list:
    peg, cube, goal = pos(sim.peg), pos(sim.cube), pos(sim.goal_region)
    head = to_numpy(sim.peg_head_pos).astype(np.float32)
    return [peg, quat(sim.peg), cube, goal, REL_SCALE * (peg - tcp_pos), REL_SCALE * (cube - head),
            REL_SCALE * (goal - cube)]


def _pull_cube_tool(sim, tcp_pos: np.ndarray) -> list:
    tool, cube = pos(sim.l_shape_tool), pos(sim.cube)
    return [tool, quat(sim.l_shape_tool), cube, REL_SCALE * (tool - tcp_pos), REL_SCALE * (cube - tool)]


OTHER_PRIVILEGED: dict[str, Callable[[Any, np.ndarray], list]] = {
    "LiftPegUpright-v1": _lift_peg,
    "PokeCube-v1": _poke_cube,
    "PullCubeTool-v1": _pull_cube_tool,
}


def other_state(sim, privileged: bool, env_id: str) -> np.ndarray:
    tcp_pos = pos(tcp(sim))
    parts = [tcp_pos, [gripper_width(sim)], quat(tcp(sim))]
    if privileged:
        parts += OTHER_PRIVILEGED[env_id](sim, tcp_pos)
    return np.concatenate(parts).astype(np.float32)


def state_fn_for(env_id: str) -> Callable[[Any, bool], np.ndarray]:
    layout = family_state if env_id in OBJECT_AND_GOAL else other_state
    return lambda sim, privileged: layout(sim, privileged, env_id)


# ---------------------------------------------------------------------- the tasks
@dataclasses.dataclass(frozen=True)
class PandaTask:
    env_id: str
    instruction: str
    max_episode_steps: int
    description: str
    placement: Placement  # the manipulated object, the region ManiSkill draws it in, what moves with it
    paraphrases: tuple[str, ...]  # held-out rewordings for the instruction axis (never used in training)


CENTRE = Region((-0.1, 0.1), (-0.1, 0.1))  # where most tasks draw their object: 5 x 5 grid, 4 x 4 off it
PICK_PARAPHRASES = ("grab the red block and bring it to the green goal",
                    "take the red cube over to the green marker",
                    "lift the red box and carry it to the green point")
HOLD_PARAPHRASES = ("raise the red block a little and keep it at the green goal",
                    "pick the red cube up just a bit and hold it still at the green marker",
                    "lift the red box a few centimetres and keep holding it at the green point")
PANDA_TASKS = (
    PandaTask("PickCube-v1", "pick up the red cube and move it to the green target", 50,
              "grasp the cube and bring it to a goal up to 0.3 m above the table",
              Placement("cube", CENTRE), PICK_PARAPHRASES),
    PandaTask("PickCubeLowGoal-v1", "lift the red cube slightly and hold it at the green target", 50,
              "PickCube with the goal at most 0.05 m above the resting cube (success counts a cube that reached "
              "the goal even if it was let go)", Placement("cube", CENTRE), HOLD_PARAPHRASES),
    PandaTask("PickCubeLowGoal-v2", "lift the red cube slightly and hold it at the green target", 50,
              "PickCubeLowGoal-v1 where success needs the cube held (grasped, robot still) at the goal for 3 "
              "steps, as the instruction says (the razor experiment's new task)", Placement("cube", CENTRE), HOLD_PARAPHRASES),
    PandaTask("StackCube-v1", "stack the red cube on top of the green cube", 50,
              "grasp the red cube and release it resting on the green one",
              Placement("cubeA", CENTRE, ("cubeB",)),
              ("put the red block on top of the green block", "place the red cube onto the green one",
               "set the red box down on the green box")),
    PandaTask("PushCube-v1", "push the blue cube forward onto the target", 50,
              "push the cube 0.2 m along +x into the target region",
              Placement("obj", CENTRE, ("goal_region",)),
              ("shove the blue block ahead onto the red and white circle",
               "slide the blue cube away from you to the target", "nudge the blue box forwards until it is on the goal")),
    PandaTask("PullCube-v1", "pull the blue cube back onto the target", 50,
              "pull the cube 0.2 m along -x into the target region",
              Placement("obj", CENTRE, ("goal_region",)),
              ("drag the blue block backwards onto the red and white circle",
               "bring the blue cube towards you to the target", "draw the blue box back until it is on the goal")),
    PandaTask("PlaceSphere-v1", "place the blue ball into the shallow bin", 50,
              "grasp the sphere and release it in the bin",
              Placement("obj", Region((-0.1, -0.05), (-0.1, 0.1)), ("bin",)),
              ("put the blue sphere in the flat container", "drop the blue ball inside the low box",
               "set the blue globe down in the tray")),
    PandaTask("LiftPegUpright-v1", "lift the peg and stand it upright on the table", 50,
              "turn a peg lying on the table to stand on its end",
              Placement("peg", CENTRE),
              ("stand the stick up on its end", "turn the lying peg so it points straight up",
               "set the rod upright on the table")),
    PandaTask("PokeCube-v1", "use the peg to poke the red cube onto the target", 50,
              "grasp the peg and push the cube with its head",
              Placement("peg", CENTRE, ("cube", "goal_region")),
              ("push the red block onto the goal with the stick", "shove the red cube to the target using the rod",
               "poke the red box onto the circle with the peg")),
    PandaTask("PullCubeTool-v1", "use the L-shaped tool to pull the blue cube closer", 100,
              "pull an out-of-reach cube with a hook-shaped tool",
              Placement("l_shape_tool", Region((-0.3, -0.1), (-0.3, -0.1)), ("cube",)),
              ("hook the blue block with the tool and drag it towards the robot",
               "use the hook to bring the blue cube within reach", "draw the blue box closer with the L tool")),
)
TASKS_BY_ENV_ID = {task.env_id: task for task in PANDA_TASKS}
CUSTOM_ENV_IDS = {"PickCubeLowGoal-v1", "PickCubeLowGoal-v2"}  # defined in vla_cl.envs.maniskill_tasks

for _task in PANDA_TASKS:
    register(
        TaskSpec(
            task_id=f"maniskill/{_task.env_id}",
            factory=FACTORY,
            backend_id=_task.env_id,
            instruction=_task.instruction,
            max_episode_steps=_task.max_episode_steps,
            description=_task.description,
            paraphrases=_task.paraphrases,
        )
    )


def sim_config(control_freq: int | None) -> dict:
    """ManiSkill needs sim_freq to be a multiple of control_freq; keep the physics step near 100 Hz."""
    if control_freq is None:
        return {}
    return {"control_freq": control_freq, "sim_freq": control_freq * max(1, round(DEFAULT_SIM_FREQ / control_freq))}


def make_panda_task(spec: TaskSpec, options: EnvOptions) -> VLAEnv:
    if spec.backend_id in CUSTOM_ENV_IDS:
        import vla_cl.envs.maniskill_tasks  # noqa: F401  (registers the variant with ManiSkill)
    raw = make_maniskill(
        spec.backend_id,
        obs_mode="none" if options.obs_mode == "state" else "rgb",
        control_mode=CONTROL_MODE,
        render_size=options.render_size,
        sensor_size=(options.camera_size or options.image_size) if options.obs_mode != "state" else None,
        sim_config=sim_config(options.control_freq),
    )
    return VLAEnv(
        raw,
        spec,
        options,
        state_fn=state_fn_for(spec.backend_id),
        action_adapter=panda_action_adapter(),
        camera="base_camera",
        placement=TASKS_BY_ENV_ID[spec.backend_id].placement,
        restyle=TableRestyler(),
        after_reset=fast_control.accelerate,
    )
