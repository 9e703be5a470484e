"""The Bridge scenes' scripted experts, their layouts (SimplerEnv's finite list of starts and draws off it), the
visual axis, the reduced camera, and demonstrations recorded from them.

State observations where the image is not under test: the scenes step ~130 times a second then.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_ASSETS
from vla_cl.envs import make
from vla_cl.envs.bridge_layouts import MIN_GRID_DISTANCE, BridgeStarts
from vla_cl.envs.experts import ExpertPolicy, has_expert
from vla_cl.envs.vector import rollout

pytestmark = pytest.mark.sim
TASK_IDS = ["simpler/widowx_carrot_on_plate", "simpler/widowx_spoon_on_towel", "simpler/widowx_stack_cube",
            "simpler/widowx_put_eggplant_in_basket"]
CARROT = TASK_IDS[0]


@pytest.fixture(autouse=True)
def shared_assets(monkeypatch, needs_sim):
    monkeypatch.setenv("MS_ASSET_DIR", str(SHARED_ASSETS))


def starts(env, seeds):
    """(named start, source xyz, target xyz) in the robot base frame for each seed."""
    out = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        out.append((info["initial_state"], obs["state"][15:18].copy(), obs["state"][18:21].copy()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_IDS)
def test_the_expert_succeeds_on_and_off_the_grid(task):
    """The experts' measured rates (README) are over 50 episodes a scene; here 4 per layout, which an expert that
    works must pass (a broken one fails them all)."""
    assert has_expert(task)
    for layout in ("grid", "off_grid"):
        env = make(task, obs_mode="state", layout=layout)
        try:
            episodes = rollout(ExpertPolicy(task, env), env, 4, seed=0)
        finally:
            env.close()
        assert sum(e.success for e in episodes) >= 3, (layout, [e.success for e in episodes])
        assert all(e.length < env.max_episode_steps for e in episodes if e.success)


def test_grid_starts_are_the_scenes_own_list_in_seed_order():
    env = make(CARROT, obs_mode="state")
    try:
        sim = env.sim
        count = len(sim.xyz_configs) * len(sim.quat_configs)
        assert count == 24
        first = starts(env, range(count))
        assert [name for name, _, _ in first] == [f"config {k}" for k in range(count)]
        # seed s starts from configuration s mod 24: a later lap repeats the first, start for start
        again = starts(env, range(count, count + 4))
        for (name, src, tgt), (name2, src2, tgt2) in zip(first[:4], again):
            assert name == name2
            np.testing.assert_allclose(src, src2, atol=1e-4)
            np.testing.assert_allclose(tgt, tgt2, atol=1e-4)
        # the configurations put the carrot at 4 points and the plate at the other 3 of a 15 cm square
        assert len({tuple(np.round(src[:2], 2)) for _, src, _ in first}) == 4
    finally:
        env.close()


@pytest.mark.parametrize("task", [CARROT, "simpler/widowx_put_eggplant_in_basket"])
def test_off_grid_starts_avoid_every_grid_point(task):
    grid = make(task, obs_mode="state")
    off = make(task, obs_mode="state", layout="off_grid")
    try:
        layouts = BridgeStarts(grid.sim.xyz_configs.numpy(), grid.sim.quat_configs.numpy())
        drawn = [layouts.start("off_grid", seed, np.random.default_rng([seed, 11])) for seed in range(20)]
        for start in drawn:
            for i, points in enumerate(layouts.points):
                if len(points) > 1:  # an object on several grid points moves off all of them
                    assert np.min(np.linalg.norm(points - start.xyz[i, :2], axis=1)) >= MIN_GRID_DISTANCE
                else:  # one that always sits at one point (the eggplant scene's basket) stays there
                    np.testing.assert_allclose(start.xyz[i, :2], points[0])
            assert np.linalg.norm(start.xyz[0, :2] - start.xyz[1, :2]) >= layouts.min_separation
        seen = starts(off, range(6))
        assert all(name is None for name, _, _ in seen)  # continuous draws: every start its own
        assert len({tuple(np.round(src, 3)) for _, src, _ in seen}) == 6
        # the same seed starts from the same point in a fresh env
        fresh = make(task, obs_mode="state", layout="off_grid")
        np.testing.assert_allclose(starts(fresh, [3])[0][1], seen[3][1], atol=1e-4)
        fresh.close()
    finally:
        grid.close()
        off.close()


def test_shifted_visuals_recolour_the_image_and_leave_the_scene():
    plain = make(CARROT, obs_mode="both", image_size=32, camera_size=64)
    shifted = make(CARROT, obs_mode="both", image_size=32, camera_size=64, visual="shifted")
    try:
        a, b = plain.reset(seed=2)[0], shifted.reset(seed=2)[0]
        np.testing.assert_allclose(a["state"], b["state"], atol=1e-5)
        assert np.abs(a["image"].astype(int) - b["image"]).mean() > 5
        c, d = shifted.reset(seed=3)[0], shifted.reset(seed=2)[0]
        assert np.abs(c["image"].astype(int) - d["image"]).mean() > 1  # redrawn per episode
        np.testing.assert_array_equal(d["image"], b["image"])  # from the episode's seed alone
    finally:
        plain.close()
        shifted.close()


def test_camera_size_renders_the_same_view_smaller():
    native = make(CARROT, obs_mode="rgb", image_size=32)
    small = make(CARROT, obs_mode="rgb", image_size=32, camera_size=128)
    try:
        a, b = native.reset(seed=0)[0]["image"], small.reset(seed=0)[0]["image"]
        sensor = small.sim._sensors["3rd_view_camera"].config
        assert (sensor.width, sensor.height) == (128, 96)
        assert a.shape == b.shape == (32, 32, 3)
        # the intrinsics are scaled with the size: the same picture, only coarser before the resize
        assert np.abs(a.astype(int) - b).mean() < 12
    finally:
        native.close()
        small.close()


def test_a_failed_expert_episode_is_never_recorded_as_a_success(monkeypatch):
    from vla_cl.envs import bridge_experts
    from vla_cl.envs.demos import collect_demos

    # an expert that never closes its gripper cannot succeed
    real = bridge_experts.BridgePickPlaceExpert.step

    def open_handed(self, sim):
        action = real(self, sim)
        action[6] = 1.0
        return action

    monkeypatch.setattr(bridge_experts.BridgePickPlaceExpert, "step", open_handed)
    demos = collect_demos(CARROT, 2, seed=0, only_success=False, max_attempts=2)
    assert demos.meta["success_rate"] == 0.0 and not demos.arrays["success"].any()
    with pytest.raises(ValueError, match="succeeded in none of 2 attempts"):
        collect_demos(CARROT, 1, seed=0, max_attempts=2)


# ------------------------------------------------------------------------------------------ image demonstrations


@pytest.fixture(scope="module")
def image_demos(tmp_path_factory):
    """`vla-cl demos` of the carrot scene with camera images at a tiny OpenVLA's input size (28 px), and the state."""
    from vla_cl.cli import main

    out = tmp_path_factory.mktemp("demos") / "carrot"
    assert main(["demos", f"task={CARROT}", "n=2", "obs_mode=both", "image_size=28", "camera_size=64",
                 f"out_dir={out}"]) == 0
    return out


def test_image_demonstrations_hold_the_camera_image_at_the_policys_size(image_demos, capsys):
    import json

    from vla_cl.envs.demos import load_demos

    demos = load_demos(image_demos)
    assert demos.arrays["image"].shape[1:] == (28, 28, 3) and demos.arrays["state"].shape[1:] == (27,)
    assert demos.meta["env_options"]["camera_size"] == 64 and demos.meta["success_rate"] == 1.0
    summary = json.loads((image_demos / "summary.json").read_text())
    assert summary["success_ci95"][0] > 0.1 and summary["steps_per_second"] > 0


def test_training_refuses_demonstrations_of_another_image_or_camera_size(image_demos, tmp_path, capsys):
    from vla_cl.cli import main

    common = ["train", "updater=sft", f"task={CARROT}", f"demos={image_demos}", "iterations=1",
              f"out_dir={tmp_path / 'run'}"]
    assert main([*common, "policy=small_vlm", "policy_preset=tiny", "camera_size=64"]) == 2  # small_vlm reads 32 px
    err = capsys.readouterr().err
    assert "policy's input size 32 px" in err and "recorded at 28 px" in err
    assert main([*common, "policy=openvla", "policy_preset=tiny"]) == 2  # 28 px, but rendered at camera_size=None
    err = capsys.readouterr().err
    assert "camera_size=None" in err and "camera_size=64" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pretrain_warms_up_an_image_policy_on_several_scenes_and_measures_it(tmp_path):
    from vla_cl.cli import main
    from vla_cl.evaluation import read_result
    from vla_cl.policies import load_policy

    stack = "simpler/widowx_stack_cube"
    for policy, reads in (("small_vlm", 32), ("openvla", 28)):
        out = tmp_path / policy
        assert main(["pretrain", f"policy={policy}", "policy_preset=tiny", f"tasks=[{CARROT},{stack}]", "demos=1",
                     "epochs=1", "camera_size=64", "eval_episodes=1", "workers=1", "progress=false",
                     f"out_dir={out}"] + (["image_size=32"] if policy == "small_vlm" else [])) == 0
        warmed = load_policy(out / "artifacts" / "policy")
        assert warmed.image_size == reads and warmed.name == policy
        assert read_result(out / "eval").tasks == [CARROT, stack]
        if policy == "openvla":  # the adapters and a reference to the (random toy) base, nothing more
            assert warmed.has_adapter and warmed.config_dict()["base"]["kind"] == "random"


def test_the_razor_on_missing_bridge_assets_stops_before_any_episode(tmp_path, monkeypatch, capsys):
    from vla_cl.cli import main

    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "empty"))
    assert main(["razor", "preset=vision", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "bridge_v2_real2sim" in err and "download_asset" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "empty").exists()
