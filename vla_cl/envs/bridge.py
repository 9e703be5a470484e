"""SimplerEnv Bridge (WidowX) scenes as ``simpler/widowx_*`` tasks, through ManiSkill3's digital twins.

ManiSkill3 ships the SimplerEnv "visual matching" Bridge scenes (``PutCarrotOnPlateInScene-v1`` and
friends). This module puts them behind :class:`~vla_cl.envs.wrapper.VLAEnv` with SimplerEnv's
conventions, so a policy sees exactly what OpenVLA sees in SimplerEnv's evaluation:

* control ``arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos`` at 5 Hz (500 Hz physics). Its
  arm input is NOT normalised: the 7-D action is already physical and passes to the controller
  unchanged: xyz delta (m, robot base frame), axis-angle rotation delta (rad, about base-frame axes
  through the end effector), gripper (-1 close, +1 open; ManiSkill maps [-1, 1] linearly onto the
  finger targets). The controller accumulates targets, so deltas add up exactly even when the arm
  lags. The action space is +-``TRANSLATION_LIMIT`` m and +-``ROTATION_LIMIT`` rad, which holds every
  action OpenVLA can emit with the ``bridge_orig`` statistics (see :mod:`vla_cl.actions`);
* image: the ``3rd_view_camera`` (640x480, the Bridge camera) greenscreened with the real photo, resized
  to ``image_size`` squared (224 by default) with ``cv2.INTER_AREA`` (as OpenVLA's SimplerEnv evaluation
  does); these tasks observe the image by default (``obs_mode`` rgb);
* instruction: the scene's ``get_language_instruction()``; info: ``success``, ``is_src_obj_grasped``,
  ``consecutive_grasp``, ``src_on_target`` (ManiSkill's evaluation); 60 steps (eggplant 120).

State vector (``obs["state"]``, float32; positions in the robot BASE frame, the frame actions use)::

    proprioception (15): [0:8] joint positions (6 arm, 2 fingers), [8:11] end-effector
                         (ee_gripper_link) position, [11:15] its quaternion (w, x, y, z), w >= 0
    privileged (+12):    [15:18] source object position, [18:21] target object position,
                         [21:24] 10 * (source - ee), [24:27] 10 * (target - source)

Assets come from ``MS_ASSET_DIR`` (default ``~/.maniskill``; asset ids ``bridge_v2_real2sim`` and
``widowx250s``), checked before ManiSkill is touched (:mod:`vla_cl.envs.assets`). ManiSkill bakes the
asset folder into module constants when first imported; :func:`point_maniskill_at` re-points the ones
these scenes read, so ``MS_ASSET_DIR`` may be set before or after ManiSkill is imported, as long as it
is set before ``make()``.

Layouts and visuals (:mod:`vla_cl.envs.bridge_layouts`): SimplerEnv's scenes start each episode from a
fixed list of configurations; that list is these tasks' training grid (``layout="grid"``: seed s starts
from configuration s mod N), and ``layout="off_grid"`` draws positions between and around its points.
The instruction axis uses the paraphrases below; ``visual="shifted"`` recolours the greenscreened photo
and retints the lights.

Camera size: SimplerEnv's protocol renders the 640x480 camera and resizes it to the policy's input.
``camera_size=W`` renders it W pixels wide instead (height 3/4 of it, the intrinsics scaled: the same
view), then resizes as usual: 160 px steps ~3x faster on a CPU (``benchmarks/envs.py``). Images made so
are blurrier than the protocol's and NOT comparable with SimplerEnv's published numbers.

Each episode's objects settle with the robot at its start pose (ManiSkill settles them with the robot
wherever the previous episode left it), so a seed gives the same start whatever came before.

Gaps in an asset folder (the offline copy lacks the table stage meshes, the eggplant's visual mesh and
the sink model) are filled with stand-ins, each announced with a :class:`StandInWarning`:

* no stage file -> a flat static box whose top is at ``TABLE_TOP_Z`` (0.87 m), covering the scene
  (1.0 x 1.2 m), over a floor at z = 0;
* no visual mesh -> the object's collision mesh is drawn in a flat colour;
* no sink model -> the sink is left out (the eggplant and the basket target rest on the table).

Observation images are greenscreened (everything but the robot and the task objects is replaced by the
real photo), so the stand-in table shows only in ``render()`` frames. Scenes with stand-ins are NOT
comparable to published SimplerEnv numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.envs.assets import KNOWN_ASSETS, MissingAsset, MissingAssetError, check_assets
from vla_cl.envs.bridge_layouts import BridgeRestyler, BridgeStarts, restore_configs, use_start
from vla_cl.envs.maniskill import import_maniskill, make_maniskill, to_numpy
from vla_cl.envs.registry import EnvOptions, TaskSpec, register
from vla_cl.envs.wrapper import ActionAdapter, VLAEnv

CONTROL_MODE = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
CAMERA = "3rd_view_camera"
CONTROL_FREQ = 5  # Hz; Bridge actions are deltas per 0.2 s step, so no other rate is offered
ASSET_IDS = ("bridge_v2_real2sim", "widowx250s")
EE_LINK = "ee_gripper_link"  # the link the arm controller moves
TRANSLATION_LIMIT = 0.05  # m per step
ROTATION_LIMIT = 0.3  # rad per step, per axis-angle component
REL_SCALE = 10.0
TABLE_TOP_Z = 0.87  # m, where the real stage's table top is
TABLE_CENTER_XY = (-0.15, 0.05)  # m; objects lie around (-0.16, 0.0) (sink scene: up to y = 0.33)
TABLE_HALF_SIZE = (0.5, 0.6, 0.05)  # m
FLOOR_HALF_SIZE = (5.0, 5.0, 0.05)  # m; top at z = 0, catches objects knocked off the stand-in table
CAMERA_FOCAL_PX, CAMERA_WIDTH_PX = 623.588, 640  # the Bridge camera's (and render camera's) focal length
CAMERA_CENTRE_PX = (319.501, 239.545)  # its principal point at 640x480
VISUAL_STAND_IN_COLOR = (0.35, 0.15, 0.45)  # drawn for objects without a visual mesh
FACTORY = "vla_cl.envs.bridge:make_bridge_task"


class StandInWarning(UserWarning):
    """A Bridge scene was built with stand-ins for missing asset files."""


@dataclasses.dataclass(frozen=True)
class BridgeTask:
    name: str
    env_id: str  # ManiSkill3's id
    instruction: str  # what the scene's get_language_instruction() returns
    max_episode_steps: int
    objects: tuple[str, str]  # model ids of the source and target object
    stage: str  # stage file under the dataset folder
    scenery: tuple[str, ...] = ()  # other model ids the scene loads
    description: str = ""
    paraphrases: tuple[str, ...] = ()  # held-out rewordings of the instruction (the instruction axis)


BRIDGE_TASKS = (
    BridgeTask(
        "widowx_carrot_on_plate",
        "PutCarrotOnPlateInScene-v1",
        "put carrot on plate",
        60,
        ("bridge_carrot_generated_modified", "bridge_plate_objaverse_larger"),
        "stages/bridge_table_1_v1.glb",
        description="pick the carrot and place it on the plate",
        paraphrases=("place the carrot onto the plate", "move the carrot to the dish", "set the carrot on the plate"),
    ),
    BridgeTask(
        "widowx_spoon_on_towel",
        "PutSpoonOnTableClothInScene-v1",
        "put the spoon on the towel",
        60,
        ("bridge_spoon_generated_modified", "table_cloth_generated_shorter"),
        "stages/bridge_table_1_v1.glb",
        description="pick the spoon and place it (partly) on the towel",
        paraphrases=("place the spoon onto the cloth", "move the spoon to the towel", "lay the spoon on the napkin"),
    ),
    BridgeTask(
        "widowx_stack_cube",
        "StackGreenCubeOnYellowCubeBakedTexInScene-v1",
        "stack the green block on the yellow block",
        60,
        ("baked_green_cube_3cm", "baked_yellow_cube_3cm"),
        "stages/bridge_table_1_v1.glb",
        description="stack a 3 cm green cube on a 3 cm yellow cube",
        paraphrases=("put the green cube on top of the yellow cube", "place the green block onto the yellow one",
                     "set the green cube on the yellow block"),
    ),
    BridgeTask(
        "widowx_put_eggplant_in_basket",
        "PutEggplantInBasketScene-v1",
        "put eggplant into yellow basket",
        120,
        ("eggplant", "dummy_sink_target_plane"),
        "stages/bridge_table_1_v2.glb",
        scenery=("sink",),
        description="move the eggplant from the sink into the yellow basket (toy-sink stage)",
        paraphrases=("place the eggplant in the yellow basket", "move the aubergine into the yellow basket",
                     "drop the eggplant into the basket"),
    ),
)
TASKS_BY_ID = {f"simpler/{task.name}": task for task in BRIDGE_TASKS}

for _task in BRIDGE_TASKS:
    register(
        TaskSpec(
            task_id=f"simpler/{_task.name}",
            factory=FACTORY,
            backend_id=_task.env_id,
            instruction=_task.instruction,
            max_episode_steps=_task.max_episode_steps,
            assets=ASSET_IDS,
            description=_task.description,
            paraphrases=_task.paraphrases,
            default_obs_mode="rgb",  # a VLA reads the (greenscreened) camera image, as in SimplerEnv
            action_dataset="bridge_orig",  # WidowX / Bridge: the statistics an OpenVLA checkpoint acts with
            layouts=("grid", "off_grid"),  # SimplerEnv's own fixed set of episode layouts is these scenes' grid
            visuals=("default", "shifted"),
        )
    )


# ---------------------------------------------------------------------- what the asset folder lacks
@dataclasses.dataclass(frozen=True)
class SceneGaps:
    """Files a scene needs that are missing from the asset folder, and will be stood in for."""

    stage: Path | None = None  # the stage mesh -> flat table
    visuals: tuple[Path, ...] = ()  # visual meshes ManiSkill will look for -> collision mesh, flat colour
    scenery: tuple[Path, ...] = ()  # model folders of scenery -> left out

    def messages(self, task_id: str) -> list[str]:
        notes = []
        if self.stage is not None:
            notes.append(
                f"{task_id}: table stage {self.stage} is missing; a flat stand-in table "
                f"(top at z = {TABLE_TOP_Z} m) replaces it. Results are not comparable to published "
                "SimplerEnv numbers (download bridge_v2_real2sim for the real stage)."
            )
        for visual in self.visuals:
            notes.append(
                f"{task_id}: visual mesh {visual.parent / 'textured.*'} is missing; the collision mesh is "
                "drawn in a flat colour instead, so the object does not look like the real one: this is "
                "not a fair evaluation scene for image-based policies."
            )
        for folder in self.scenery:
            notes.append(
                f"{task_id}: scenery model {folder} is missing and is left out of the scene; "
                "this is not a fair evaluation scene."
            )
        return notes


def visual_mesh(model_dir: Path) -> Path | None:
    """The visual mesh ManiSkill loads for a model (it tries .obj, then .dae, then .glb), if any exists."""
    for suffix in ("obj", "dae", "glb"):
        if (model_dir / f"textured.{suffix}").exists():
            return model_dir / f"textured.{suffix}"
    return None


def find_gaps(task: BridgeTask, root: Path) -> SceneGaps:
    """What the asset root lacks for ``task``; raises MissingAssetError when a task object cannot collide."""
    dataset_dir = root / KNOWN_ASSETS["bridge_v2_real2sim"].folder
    models = dataset_dir / "custom" / "models"
    no_collision = [models / name / "collision.obj" for name in task.objects]
    no_collision = [path for path in no_collision if not path.exists()]
    if no_collision:
        problem = (
            "lacks "
            + ", ".join(str(p.relative_to(dataset_dir)) for p in no_collision)
            + " (incomplete download?)"
        )
        raise MissingAssetError(
            [MissingAsset("bridge_v2_real2sim", dataset_dir, problem)], root, needed_by=f"simpler/{task.name}"
        )
    stage = dataset_dir / task.stage
    return SceneGaps(
        stage=None if stage.exists() else stage,
        # ManiSkill falls back to textured.glb when no visual mesh exists: that is the file it will ask for.
        visuals=tuple(
            models / name / "textured.glb" for name in task.objects if visual_mesh(models / name) is None
        ),
        scenery=tuple(
            models / name for name in task.scenery if not (models / name / "collision.obj").exists()
        ),
    )


# ---------------------------------------------------------------------- building the stand-ins
def _same_file(a: str, b: Path) -> bool:
    return bool(a) and Path(a).resolve() == b.resolve()


def _inside(filename: str, folder: Path) -> bool:
    return bool(filename) and folder.resolve() in Path(filename).resolve().parents


def _add_stand_in_table(builder) -> None:
    """A static box whose top is at TABLE_TOP_Z in the world, whatever pose the stage actor is built at,
    and a floor at z = 0 so that an object knocked off the table stops there instead of falling forever
    (which would put ever larger numbers into the state vector)."""
    import sapien

    actor_pose = (
        builder.initial_pose if isinstance(builder.initial_pose, sapien.Pose) else builder.initial_pose.sp
    )
    for center_xy, top, half_size, color in (
        (TABLE_CENTER_XY, TABLE_TOP_Z, TABLE_HALF_SIZE, (0.55, 0.45, 0.35)),
        ((0.0, 0.0), 0.0, FLOOR_HALF_SIZE, (0.25, 0.25, 0.25)),
    ):
        local = actor_pose.inv() * sapien.Pose([*center_xy, top - half_size[2]])
        builder.add_box_collision(pose=local, half_size=half_size)
        builder.add_box_visual(pose=local, half_size=half_size, material=color)


def fill_gaps(builder, gaps: SceneGaps) -> None:
    """Rewrite an actor builder's shape records so that it builds without the missing files."""
    import sapien

    stage_hit = False
    if gaps.stage is not None:
        kept = [r for r in builder.collision_records if not _same_file(r.filename, gaps.stage)]
        stage_hit = len(kept) != len(builder.collision_records)
        builder.collision_records = kept
        builder.visual_records = [r for r in builder.visual_records if not _same_file(r.filename, gaps.stage)]
    for folder in gaps.scenery:
        builder.collision_records = [r for r in builder.collision_records if not _inside(r.filename, folder)]
        builder.visual_records = [r for r in builder.visual_records if not _inside(r.filename, folder)]
    for record in builder.visual_records:
        for visual in gaps.visuals:
            if _same_file(record.filename, visual):
                record.filename = str(visual.parent / "collision.obj")
                record.material = sapien.render.RenderMaterial(base_color=(*VISUAL_STAND_IN_COLOR, 1.0))
    if stage_hit:
        _add_stand_in_table(builder)


@contextlib.contextmanager
def filling_gaps(scene, gaps: SceneGaps) -> Iterator[None]:
    """While active, every actor builder the scene hands out fills ``gaps`` just before it builds.

    The Bridge scenes add the stage file inside ``_load_scene`` and SAPIEN only opens files when an
    actor is built, so the builder's records are rewritten at build time.
    """
    create = scene.create_actor_builder

    def create_actor_builder():
        builder = create()
        build = builder.build

        def build_with_stand_ins(*args, **kwargs):
            fill_gaps(builder, gaps)
            return build(*args, **kwargs)

        builder.build = build_with_stand_ins
        return builder

    scene.create_actor_builder = create_actor_builder
    try:
        yield
    finally:
        del scene.create_actor_builder  # back to the class's method


class FillsSceneGaps:
    """Mixed into a ManiSkill Bridge scene: builds stand-ins for missing files, allows obs_mode "none".

    Episodes start the same way whatever came before (see ``_initialize_episode``). It also keeps two
    greenscreen attributes per instance that ManiSkill keeps on the class (shared by every scene in the
    process, so a second scene would inherit the first one's objects and photo). With every file present
    it changes nothing else.
    """

    SUPPORTED_OBS_MODES = ("rgb+segmentation", "none")

    def __init__(self, *args: Any, scene_gaps: SceneGaps | None = None, **kwargs: Any):
        self.scene_gaps = scene_gaps or SceneGaps()
        self._rest_qpos = None  # the robot's start pose, read after the first episode is set up
        self._rgb_overlay_images = {}
        self._objects_to_remove_from_greenscreen = []
        if kwargs.get("obs_mode") == "none":
            self.rgb_overlay_mode = "none"  # no cameras to greenscreen (ManiSkill would look for them)
        super().__init__(*args, **kwargs)

    def _load_scene(self, options: dict) -> None:
        with filling_gaps(self.scene, self.scene_gaps):
            super()._load_scene(options)

    def _initialize_episode(self, env_idx, options: dict) -> None:
        # ManiSkill lets the objects settle BEFORE it moves the robot to its start pose, so the robot
        # would stand (and push) where the previous episode left it: the same seed could start
        # differently, and an object dropped onto the arm can be flung away. Settle from the rest pose.
        if self._rest_qpos is not None:
            self.agent.reset(self._rest_qpos)
            self.agent.robot.set_joint_drive_targets(self._rest_qpos, joints=self.agent.robot.active_joints)
        start = options.pop(BridgeStarts.RESET_KEY, None)  # the layout's choice (vla_cl.envs.bridge_layouts)
        saved = use_start(self, start, options) if start is not None else None
        try:
            super()._initialize_episode(env_idx, options)
        finally:
            restore_configs(self, saved)
        if self._rest_qpos is None:
            self._rest_qpos = self.agent.robot.get_qpos().clone()


def stand_in_env_id(env_id: str) -> str:
    """Register (once) the ManiSkill scene with :class:`FillsSceneGaps` mixed in; returns its ManiSkill id.

    It is registered without asset download ids: assets are checked here beforehand, and ManiSkill's own
    check would try to download (and leave an empty folder) instead of failing.
    """
    import_maniskill()
    from mani_skill.utils.registration import REGISTERED_ENVS, register_env

    uid = f"VlaCl-{env_id}"
    if uid not in REGISTERED_ENVS:
        original = REGISTERED_ENVS[env_id]
        cls = type(
            f"{original.cls.__name__}WithStandIns", (FillsSceneGaps, original.cls), {"__module__": __name__}
        )
        register_env(uid, max_episode_steps=original.max_episode_steps)(cls)
    return uid


def point_maniskill_at(root: Path) -> None:
    """Make the Bridge scenes and the WidowX robot read their assets under ``root``.

    ManiSkill computes these paths from ``MS_ASSET_DIR`` when it is first imported; re-pointing them
    here makes the asset folder follow the variable at ``make()`` time, whatever was imported first.
    """
    import_maniskill()
    from mani_skill.agents.robots.widowx.widowx import WidowX250S
    from mani_skill.envs.tasks.digital_twins.bridge_dataset_eval import base_env

    base_env.BRIDGE_DATASET_ASSET_PATH = root / KNOWN_ASSETS["bridge_v2_real2sim"].folder
    WidowX250S.urdf_path = str(root / KNOWN_ASSETS["widowx250s"].folder / "wx250s.urdf")


# ---------------------------------------------------------------------- observations and actions
def _base_frame(sim, pose):
    return sim.agent.robot.pose.inv() * pose


def _unit_quat(q: np.ndarray) -> np.ndarray:
    return -q if q[0] < 0 else q


def bridge_state(sim, privileged: bool) -> np.ndarray:
    """The state vector documented in the module docstring."""
    robot = sim.agent.robot
    ee = _base_frame(sim, robot.links_map[EE_LINK].pose)
    ee_pos = to_numpy(ee.p)
    parts = [to_numpy(robot.get_qpos()), ee_pos, _unit_quat(to_numpy(ee.q))]
    if privileged:
        source = to_numpy(_base_frame(sim, sim.objs[sim.source_obj_name].pose).p)
        target = to_numpy(_base_frame(sim, sim.objs[sim.target_obj_name].pose).p)
        parts += [source, target, REL_SCALE * (source - ee_pos), REL_SCALE * (target - source)]
    return np.concatenate(parts).astype(np.float32)


def bridge_instruction(sim) -> str:
    return str(sim.get_language_instruction()[0])


def camera_configs(width: int | None) -> dict[str, Any]:
    """ManiSkill sensor settings for the observation camera ``width`` px wide (None: its native 640x480)."""
    if width is None:
        return {}
    scale = width / CAMERA_WIDTH_PX
    (cx, cy), focal = CAMERA_CENTRE_PX, CAMERA_FOCAL_PX * scale
    intrinsic = np.array([[focal, 0.0, cx * scale], [0.0, focal, cy * scale], [0.0, 0.0, 1.0]])
    return {"sensor_configs": {CAMERA: {"width": width, "height": round(width * 3 / 4), "intrinsic": intrinsic}}}


def render_intrinsic(size: int) -> np.ndarray:
    """Pinhole matrix for square ``size`` px render frames with the Bridge camera's horizontal field of view.

    ManiSkill's render camera carries the 640x480 intrinsic matrix, which on a square frame of another
    size would zoom in and put the principal point off-centre.
    """
    focal = CAMERA_FOCAL_PX * size / CAMERA_WIDTH_PX
    return np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


def bridge_action_adapter() -> ActionAdapter:
    """Identity map: the arm controller takes physical deltas, the gripper its +-1 (see module docstring)."""
    return ActionAdapter.symmetric(TRANSLATION_LIMIT, ROTATION_LIMIT)


# ---------------------------------------------------------------------- the factory
def make_bridge_task(spec: TaskSpec, options: EnvOptions) -> VLAEnv:
    if options.control_freq not in (None, CONTROL_FREQ):
        raise ValueError(
            f"invalid value for control_freq: {options.control_freq!r} (allowed: {CONTROL_FREQ} or None). "
            f"Bridge actions are end-effector deltas per 1/{CONTROL_FREQ} s step, as in the Bridge data."
        )
    task = TASKS_BY_ID[spec.task_id]
    root = check_assets(spec.assets, needed_by=spec.task_id)  # before ManiSkill sees the folder
    gaps = find_gaps(task, root)
    for message in gaps.messages(spec.task_id):
        warnings.warn(message, StandInWarning, stacklevel=3)
    point_maniskill_at(root)
    render_camera = (
        {} if options.render_size is None else {"intrinsic": render_intrinsic(options.render_size)}
    )
    raw = make_maniskill(
        stand_in_env_id(task.env_id),
        obs_mode="none" if options.obs_mode == "state" else "rgb+segmentation",
        control_mode=CONTROL_MODE,
        render_size=options.render_size,
        human_render_camera_configs=render_camera,
        scene_gaps=gaps,
        **camera_configs(options.camera_size if options.obs_mode != "state" else None),
    )
    sim = raw.unwrapped
    return VLAEnv(
        raw,
        spec,
        options,
        state_fn=bridge_state,
        action_adapter=bridge_action_adapter(),
        instruction_fn=bridge_instruction,
        camera=CAMERA,
        placement=BridgeStarts(sim.xyz_configs.cpu().numpy(), sim.quat_configs.cpu().numpy()),
        restyle=BridgeRestyler(CAMERA),
    )
