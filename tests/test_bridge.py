"""SimplerEnv Bridge (WidowX) tasks on the offline asset copy: stand-ins, conventions, missing assets.

The scenes render a 640x480 camera on the CPU (~10-20 steps/s, ~10 s to create), so each task is
created once per module and stepped only a few times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.conftest import SHARED_ASSETS, simulation_required
from vla_cl.envs import get_spec, list_tasks, make
from vla_cl.envs.assets import MissingAssetError, asset_path, find_missing
from vla_cl.envs.bridge import ROTATION_LIMIT, TASKS_BY_ID, TRANSLATION_LIMIT, StandInWarning

TASK_IDS = [
    "simpler/widowx_carrot_on_plate",
    "simpler/widowx_spoon_on_towel",
    "simpler/widowx_stack_cube",
    "simpler/widowx_put_eggplant_in_basket",
]
TABLE_TOP = 0.87
# Robot base positions the ManiSkill scenes set (flat table / sink); both are turned 180 degrees about z.
ROBOT_BASE = {"flat_table": np.array([0.147, 0.028, 0.870]), "sink": np.array([0.127, 0.060, 0.85])}
IMAGE, RENDER = 64, 96
DATASET = SHARED_ASSETS / "data" / "tasks" / "bridge_v2_real2sim_dataset"


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else ["<absent>"]


def test_the_four_bridge_tasks_are_registered():
    assert list_tasks("simpler") == sorted(TASK_IDS)
    spec = get_spec("simpler/widowx_put_eggplant_in_basket")
    assert spec.backend_id == "PutEggplantInBasketScene-v1" and spec.max_episode_steps == 120
    assert spec.assets == ("bridge_v2_real2sim", "widowx250s")
    assert get_spec("simpler/widowx_stack_cube").max_episode_steps == 60


@pytest.fixture(scope="module")
def shared_asset_dir():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MS_ASSET_DIR", str(SHARED_ASSETS))
        yield SHARED_ASSETS


@pytest.fixture(scope="module", params=TASK_IDS)
def bridge(request, shared_asset_dir):
    """(task id, env, warnings raised while creating it); one env per task for the whole module."""
    if not simulation_required():  # module fixtures are set up before the function-scoped needs_sim
        pytest.skip("VLA_CL_VULKAN=skip: set up without simulation")
    before = snapshot(shared_asset_dir)
    with pytest.warns(StandInWarning) as record:
        env = make(request.param, obs_mode="both", image_size=IMAGE, render_size=RENDER)
    yield request.param, env, [str(w.message) for w in record if issubclass(w.category, StandInWarning)]
    env.close()
    assert snapshot(shared_asset_dir) == before, "creating a task must not write into the asset folder"


@pytest.mark.sim
def test_warns_about_every_stand_in(bridge, needs_sim):
    task_id, _, messages = bridge
    stage = "bridge_table_1_v2.glb" if "eggplant" in task_id else "bridge_table_1_v1.glb"
    table = [m for m in messages if "stand-in table" in m]
    assert len(table) == 1 and stage in table[0] and "not comparable to published SimplerEnv" in table[0]
    if "eggplant" in task_id:
        assert any("eggplant" in m and "visual mesh" in m and "not a fair evaluation" in m for m in messages)
        assert any("sink" in m and "left out" in m for m in messages)
    else:
        assert len(messages) == 1


@pytest.mark.sim
def test_conventions_shapes_and_seeded_reset(bridge, needs_sim):
    task_id, env, _ = bridge
    np.testing.assert_allclose(env.action_space.high, [TRANSLATION_LIMIT] * 3 + [ROTATION_LIMIT] * 3 + [1.0])
    assert env.max_episode_steps == (120 if "eggplant" in task_id else 60)
    from mani_skill.utils.registration import REGISTERED_ENVS

    assert REGISTERED_ENVS[get_spec(task_id).backend_id].max_episode_steps == env.max_episode_steps
    obs, info = env.reset(seed=3)
    assert obs["instruction"] == get_spec(task_id).instruction
    assert obs["image"].shape == (IMAGE, IMAGE, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (27,) and obs["state"].dtype == np.float32
    for key in ("success", "is_src_obj_grasped", "consecutive_grasp", "src_on_target"):
        assert key in info
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs["state"], again["state"])
    np.testing.assert_array_equal(obs["image"], again["image"])
    others = [env.reset(seed=seed)[0]["state"][15:18] for seed in (4, 5, 6)]
    assert any(not np.allclose(o, obs["state"][15:18]) for o in others), "seeds should move the source object"


@pytest.mark.sim
def test_state_holds_object_positions_in_the_robot_base_frame(bridge, needs_sim):
    task_id, env, _ = bridge
    obs, _ = env.reset(seed=0)
    base = ROBOT_BASE["sink" if "eggplant" in task_id else "flat_table"]
    sim = env.sim
    for name, slot in ((sim.source_obj_name, slice(15, 18)), (sim.target_obj_name, slice(18, 21))):
        world = sim.objs[name].pose.p.numpy()[0]
        # A 180-degree turn about z: base-frame x, y are the negated world offsets, z is the height offset.
        expected = (world - base) * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(obs["state"][slot], expected, atol=1e-5)
    # The task table names the objects the ManiSkill scene actually loads (the gap check relies on it).
    assert TASKS_BY_ID[task_id].objects == (sim.source_obj_name, sim.target_obj_name)
    proprioception = env.state_fn(sim, False)
    np.testing.assert_array_equal(proprioception, obs["state"][:15])


def _rotation(quat_wxyz) -> Rotation:
    w, x, y, z = quat_wxyz
    return Rotation.from_quat([x, y, z, w])


@pytest.mark.sim
@pytest.mark.parametrize("axis", [0, 2])
def test_actions_are_physical_base_frame_deltas(bridge, axis, needs_sim):
    """3 steps of 2 cm (or 0.15 rad) along one base axis move the end effector ~6 cm (~0.45 rad) along it."""
    _, env, _ = bridge
    rest = np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)
    for offset, step, expected in ((0, 0.02, 0.06), (3, 0.15, 0.45)):
        start = env.reset(seed=0)[0]["state"]
        action = rest.copy()
        action[offset + axis] = step
        for _ in range(3):
            state = env.step(action)[0]["state"]
        for _ in range(2):  # let the arm reach the target pose
            state = env.step(rest)[0]["state"]
        wanted = np.zeros(3)
        wanted[axis] = expected
        if offset == 0:
            np.testing.assert_allclose(state[8:11] - start[8:11], wanted, atol=0.006)
        else:  # the rotation is applied in the base frame: R_end = R(delta) R_start
            turned = (_rotation(state[11:15]) * _rotation(start[11:15]).inv()).as_rotvec()
            np.testing.assert_allclose(turned, wanted, atol=0.04)


@pytest.mark.sim
def test_objects_rest_on_the_stand_in_table(bridge, needs_sim):
    task_id, env, _ = bridge
    env.reset(seed=1)
    objects = env.sim.objs
    start = {name: float(actor.pose.p[0, 2]) for name, actor in objects.items()}
    hold = np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)  # arm still, gripper open
    for _ in range(4):
        env.step(hold)
    for name, actor in objects.items():
        z = float(actor.pose.p[0, 2])
        # Every Bridge object is under 4 cm tall, so its centre sits within 2 cm above the table top.
        assert TABLE_TOP - 0.005 < z < TABLE_TOP + 0.02, f"{task_id}: {name} at z = {z:.4f}"
        assert abs(z - start[name]) < 0.002, f"{task_id}: {name} moved from {start[name]:.4f} to {z:.4f}"
    # Knocked off the table (here: put beyond its far edge), an object lands on the floor at z = 0.
    import sapien

    source = objects[env.sim.source_obj_name]
    source.set_pose(sapien.Pose([0.0, 0.9, 1.0]))
    for _ in range(5):
        env.step(hold)
    assert 0.0 < float(source.pose.p[0, 2]) < 0.05


@pytest.mark.sim
def test_steps_and_renders_a_scene(bridge, needs_sim):
    _, env, _ = bridge
    env.reset(seed=2)
    env.action_space.seed(2)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and not terminated and not truncated
    assert info["success"] is False and info["elapsed_steps"] == 3
    frame = env.render()
    assert frame.shape == (RENDER, RENDER, 3) and frame.dtype == np.uint8
    for image in (frame, obs["image"]):
        assert image.astype(np.float32).std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 20


@pytest.mark.sim
def test_with_a_stage_file_no_stand_in_is_built(tmp_path, needs_sim):
    """A complete asset folder (here: the shared copy plus a box-shaped stage mesh) takes ManiSkill's path."""
    import trimesh

    root = _folder_with(tmp_path, robot=True, dataset_parts=("custom", "real_inpainting"))
    stage = root / "data" / "tasks" / "bridge_v2_real2sim_dataset" / "stages" / "bridge_table_1_v1.glb"
    stage.parent.mkdir()
    # ManiSkill places the stage at (2.0634, 2.8313, 0) turned 90 degrees about x (the mesh is y-up): a world
    # point (X, Y, Z) is (X - 2.0634, Z, 2.8313 - Y) in mesh coordinates. The table top is 1 cm above the
    # stand-in's, to tell them apart.
    top = TABLE_TOP + 0.01
    low, high = np.array([-0.6, top - 0.1, 2.8313 - 0.6]), np.array([0.4, top, 2.8313 + 0.5])
    low[0] -= 2.0634
    high[0] -= 2.0634
    trimesh.creation.box(bounds=np.stack([low, high])).export(stage)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setenv("MS_ASSET_DIR", str(root))
        warnings.simplefilter("error", StandInWarning)
        env = make("simpler/widowx_stack_cube", obs_mode="state")
    try:
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32))
        for actor in env.sim.objs.values():  # 3 cm cubes on the mesh table, not on the stand-in
            assert abs(float(actor.pose.p[0, 2]) - (top + 0.015)) < 0.002
    finally:
        env.close()


def test_only_5_hz_control(shared_asset_dir):
    with pytest.raises(ValueError, match="control_freq"):
        make("simpler/widowx_carrot_on_plate", control_freq=10)


def _folder_with(tmp_path: Path, *, robot: bool, dataset_parts: tuple[str, ...]) -> Path:
    """An asset root under tmp_path holding links to some parts of the shared copy."""
    root = tmp_path / "assets"
    (root / "data" / "robots").mkdir(parents=True)
    if robot:
        (root / "data" / "robots" / "widowx").symlink_to(SHARED_ASSETS / "data" / "robots" / "widowx")
    dataset = root / "data" / "tasks" / "bridge_v2_real2sim_dataset"
    dataset.mkdir(parents=True)
    for part in dataset_parts:
        (dataset / part).parent.mkdir(parents=True, exist_ok=True)
        (dataset / part).symlink_to(DATASET / part)
    return root


def test_missing_assets_name_id_folder_and_command_and_touch_nothing(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MS_ASSET_DIR", str(empty))
    with pytest.raises(MissingAssetError) as caught:
        make("simpler/widowx_carrot_on_plate")
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    message = str(error)
    for expected in (
        "bridge_v2_real2sim",
        "widowx250s",
        str(empty / "data" / "tasks" / "bridge_v2_real2sim_dataset"),
        str(empty / "data" / "robots" / "widowx"),
        "python -m mani_skill.utils.download_asset bridge_v2_real2sim",
        "python -m mani_skill.utils.download_asset widowx250s",
    ):
        assert expected in message
    assert list(empty.iterdir()) == [], "the asset folder must be left exactly as it was"

    absent = tmp_path / "absent"
    monkeypatch.setenv("MS_ASSET_DIR", str(absent))
    with pytest.raises(MissingAssetError):
        make("simpler/widowx_stack_cube")
    assert not absent.exists()


def test_empty_and_incomplete_asset_folders_are_missing(tmp_path, monkeypatch):
    root = _folder_with(tmp_path, robot=True, dataset_parts=())
    before = snapshot(root)
    monkeypatch.setenv("MS_ASSET_DIR", str(root))
    with pytest.raises(MissingAssetError, match="is empty") as caught:
        make("simpler/widowx_spoon_on_towel")
    assert caught.value.asset_ids == ("bridge_v2_real2sim",)
    assert snapshot(root) == before

    # Everything but the spoon: the scene cannot be built, and the error names the model file.
    parts = (
        "custom/info_bridge_custom_v0.json",
        "custom/info_bridge_custom_baked_tex_v0.json",
        "real_inpainting",
        "custom/models/table_cloth_generated_shorter",
    )
    root = _folder_with(tmp_path / "partial", robot=True, dataset_parts=parts)
    before = snapshot(root)
    monkeypatch.setenv("MS_ASSET_DIR", str(root))
    with pytest.raises(MissingAssetError, match="bridge_spoon_generated_modified/collision.obj"):
        make("simpler/widowx_spoon_on_towel")
    assert snapshot(root) == before


def test_asset_check_is_generic(tmp_path):
    (tmp_path / "data" / "robots" / "widowx").mkdir(parents=True)
    (tmp_path / "data" / "robots" / "widowx" / "wx250s.urdf").write_text("<robot/>")
    assert asset_path("ycb", tmp_path) == tmp_path.resolve() / "data" / "assets" / "mani_skill2_ycb"
    missing = find_missing(["widowx250s", "ycb", "bridge_v2_real2sim"], tmp_path)
    assert [m.asset_id for m in missing] == ["ycb", "bridge_v2_real2sim"]
    assert missing[0].command == "python -m mani_skill.utils.download_asset ycb"


@pytest.mark.sim
def test_asset_ids_unknown_here_come_from_maniskill(tmp_path, needs_sim):
    assert asset_path("googlerobot", tmp_path) == tmp_path.resolve() / "data" / "robots" / "googlerobot"
    with pytest.raises(ValueError, match="unknown ManiSkill asset id"):
        asset_path("no_such_asset", tmp_path)


@pytest.mark.sim
def test_asset_folder_follows_ms_asset_dir_set_after_maniskill_was_imported(tmp_path, needs_sim):
    """ManiSkill bakes MS_ASSET_DIR in at import; make() must still use the folder set afterwards."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent(
        f"""
        import json, os, warnings
        os.environ["MS_ASSET_DIR"] = {str(elsewhere)!r}
        from vla_cl.envs.maniskill import import_maniskill
        import_maniskill()
        os.environ["MS_ASSET_DIR"] = {str(SHARED_ASSETS)!r}
        warnings.simplefilter("ignore")
        from vla_cl.envs import make
        from vla_cl.envs.assets import maniskill_asset_root
        env = make("simpler/widowx_stack_cube", obs_mode="state")
        obs, info = env.reset(seed=0)
        print(json.dumps({{"state": obs["state"].tolist(), "maniskill_root": str(maniskill_asset_root())}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["maniskill_root"] == str(elsewhere.resolve())  # what ManiSkill itself still believes
    state = np.array(report["state"])
    assert state.shape == (27,) and abs(state[17] - 0.015) < 0.003  # a 3 cm cube resting on the table
    assert list(elsewhere.iterdir()) == []
