"""Episode variations (layout, instruction, visual): the options the generalisation axes are made of."""

from __future__ import annotations

import numpy as np
import pytest

from vla_cl.envs import get_spec, make
from vla_cl.envs.variation import GRID_STEP, Region

pytestmark = pytest.mark.sim


def test_grid_and_off_grid_points_of_a_region():
    region = Region((-0.1, 0.1), (-0.1, 0.1))
    grid, off = region.grid_points(), region.off_grid_points()
    assert grid.shape == (25, 2) and off.shape == (16, 2)
    # every held-out point is a cell centre: GRID_STEP / sqrt(2) from its nearest grid point, no closer
    nearest = np.min(np.linalg.norm(off[:, None] - grid[None], axis=-1), axis=1)
    np.testing.assert_allclose(nearest, GRID_STEP / np.sqrt(2), atol=1e-9)
    narrow = Region((-0.1, -0.05), (-0.1, 0.1))
    assert narrow.grid_points().shape == (10, 2) and narrow.off_grid_points().shape == (4, 2)


def _start(env, seed):
    from vla_cl.envs.panda import pos

    env.reset(seed=seed)
    return pos(env.sim.obj)[:2].astype(np.float64), pos(env.sim.goal_region)[:2].astype(np.float64)


def test_layouts_put_the_object_on_or_off_the_grid_and_move_its_target_with_it():
    region = Region((-0.1, 0.1), (-0.1, 0.1))
    grid, off = region.grid_points(), region.off_grid_points()
    envs = {layout: make("maniskill/PushCube-v1", layout=layout) for layout in ("grid", "off_grid", "random")}
    try:
        for seed in range(8):
            starts = {layout: _start(env, seed) for layout, env in envs.items()}
            for layout, points in (("grid", grid), ("off_grid", off)):
                cube, target = starts[layout]
                assert np.min(np.linalg.norm(points - cube, axis=1)) < 1e-6, (layout, seed, cube)
                # PushCube puts its target 0.2 m ahead of the cube: still true after the move
                np.testing.assert_allclose(target - cube, [0.2, 0.0], atol=1e-6)
            cube, _ = starts["random"]
            assert np.min(np.linalg.norm(grid - cube, axis=1)) > 1e-4  # the simulator's continuous draw
        # the same seed starts from the same grid point in a fresh env
        again = make("maniskill/PushCube-v1", layout="grid")
        np.testing.assert_array_equal(_start(again, 3)[0], _start(envs["grid"], 3)[0])
        again.close()
    finally:
        for env in envs.values():
            env.close()


def test_paraphrases_are_held_out_rewordings_drawn_per_seed():
    spec = get_spec("maniskill/PickCube-v1")
    assert len(spec.paraphrases) >= 3 and spec.instruction not in spec.paraphrases
    env = make("maniskill/PickCube-v1", instruction="paraphrase")
    try:
        seen = [env.reset(seed=s)[0]["instruction"] for s in range(12)]
        assert set(seen) <= set(spec.paraphrases) and len(set(seen)) > 1
        assert [env.reset(seed=s)[0]["instruction"] for s in range(12)] == seen
    finally:
        env.close()


def test_every_task_has_at_least_three_paraphrases():
    from vla_cl.envs import list_tasks

    for task_id in [*list_tasks("maniskill"), *list_tasks("simpler")]:  # (tests register toy tasks too)
        spec = get_spec(task_id)
        assert len(set(spec.paraphrases)) >= 3, task_id
        assert spec.instruction not in spec.paraphrases, task_id


def test_shifted_visuals_change_the_image_but_not_the_scene():
    plain = make("maniskill/PickCube-v1", obs_mode="both", image_size=64)
    shifted = make("maniskill/PickCube-v1", obs_mode="both", image_size=64, visual="shifted")
    try:
        a, _ = plain.reset(seed=5)
        b, _ = shifted.reset(seed=5)
        np.testing.assert_array_equal(a["state"], b["state"])
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() > 10
        c, _ = shifted.reset(seed=6)
        assert np.abs(c["image"].astype(int) - b["image"].astype(int)).mean() > 1
    finally:
        plain.close()
        shifted.close()


def test_a_variation_the_task_cannot_make_is_refused_by_name():
    # the Bridge scenes start from their own finite list (or off it), never from a continuous draw of ManiSkill's
    with pytest.raises(ValueError, match="does not support layout='random'"):
        make("simpler/widowx_carrot_on_plate", layout="random")
    with pytest.raises(ValueError, match="layout"):
        make("maniskill/PickCube-v1", layout="diagonal")


def test_the_hold_variant_needs_the_cube_still_grasped():
    """PickCubeLowGoal-v2 succeeds only while the cube is held: releasing it at the goal fails v2."""
    from vla_cl.envs.experts import ExpertPolicy
    from vla_cl.envs.vector import rollout

    env = make("maniskill/PickCubeLowGoal-v2")
    try:
        episodes = rollout(ExpertPolicy("maniskill/PickCubeLowGoal-v2", env), env, 3, seed=0)
        assert all(e.success for e in episodes)
        env.reset(seed=0)
        env.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))  # contacts are read from the last physics step
        sim = env.sim
        # put the (free) cube exactly on the goal: v1's criterion holds, v2's does not
        from mani_skill.utils.structs.pose import Pose

        sim.cube.set_pose(Pose.create_from_pq(sim.goal_site.pose.p, sim.cube.pose.q))
        info = sim.evaluate()
        assert not bool(info["is_grasped"][0])
        assert bool(info["is_obj_placed"][0]) and not bool(info["success"][0])
    finally:
        env.close()
