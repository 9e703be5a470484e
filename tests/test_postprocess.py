"""SimplerEnv's OpenVLA action post-processing, checked against independent references.

Rotations: scipy's Rotation (extrinsic "xyz" Euler angles == transforms3d's "sxyz", the axes SimplerEnv's
``euler2axangle`` uses) and transforms3d itself. Grippers: hand-computed sequences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from transforms3d.euler import euler2axangle

from vla_cl.actions import (
    GoogleRobotActions,
    GoogleRobotGripper,
    axis_angle_to_euler,
    bridge_action,
    bridge_action_inverse,
    bridge_gripper,
    euler_to_axis_angle,
)

# OpenVLA-7B's bridge_orig action statistics (its HF config.json), used to check the action bounds.
BRIDGE_ORIG_Q01 = [
    -0.02872725307941437,
    -0.04170349963009357,
    -0.026093858778476715,
    -0.08092105075716972,
    -0.09288699507713317,
    -0.20718276381492615,
    0.0,
]
BRIDGE_ORIG_Q99 = [
    0.028309678435325586,
    0.040855254605412394,
    0.040161586627364146,
    0.08192047759890528,
    0.07792850524187081,
    0.20382574498653397,
    1.0,
]


def scipy_rotvec(rpy) -> np.ndarray:
    return Rotation.from_euler("xyz", np.asarray(rpy, dtype=np.float64)).as_rotvec()


@pytest.mark.parametrize(
    "rpy, expected",
    [
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((0.3, 0.0, 0.0), (0.3, 0.0, 0.0)),
        ((0.0, -0.2, 0.0), (0.0, -0.2, 0.0)),
        ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0)),
        ((math.pi / 2, 0.0, 0.0), (math.pi / 2, 0.0, 0.0)),
        # Rz(pi/2) Rx(pi/2) is a 120-degree turn about (1, 1, 1)/sqrt(3).
        ((math.pi / 2, 0.0, math.pi / 2), (2 * math.pi / 3 / math.sqrt(3),) * 3),
    ],
)
def test_hand_picked_angles(rpy, expected):
    np.testing.assert_allclose(euler_to_axis_angle(rpy), expected, atol=1e-12)
    np.testing.assert_allclose(euler_to_axis_angle(rpy), scipy_rotvec(rpy), atol=1e-12)


def test_random_angles_match_scipy_and_transforms3d():
    rng = np.random.default_rng(0)
    rpy = np.concatenate([rng.uniform(-math.pi, math.pi, (500, 3)), rng.normal(0, 0.1, (500, 3))])
    ours = euler_to_axis_angle(rpy)  # batched
    reference = scipy_rotvec(rpy)
    # Angles within 1e-6 of pi have two valid signs; compare those as rotations below.
    clear = np.linalg.norm(reference, axis=1) < math.pi - 1e-6
    np.testing.assert_allclose(ours[clear], reference[clear], atol=1e-10)
    np.testing.assert_allclose(
        Rotation.from_rotvec(ours).as_matrix(), Rotation.from_rotvec(reference).as_matrix(), atol=1e-10
    )
    for angles, got in zip(rpy, ours):
        axis, angle = euler2axangle(*angles)  # the literal call SimplerEnv makes
        theirs = np.asarray(axis) * angle
        if angle < math.pi - 1e-6:
            np.testing.assert_allclose(got, theirs, atol=1e-10)
        else:  # transforms3d may return 2 pi - theta about the opposite axis: the same rotation
            np.testing.assert_allclose(
                Rotation.from_rotvec(got).as_matrix(), Rotation.from_rotvec(theirs).as_matrix(), atol=1e-10
            )


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.floats(-3.0, 3.0, allow_nan=False)] * 3))
def test_axis_angle_is_the_same_rotation(rpy):
    ours = euler_to_axis_angle(rpy)
    assert np.linalg.norm(ours) <= math.pi + 1e-9
    np.testing.assert_allclose(
        Rotation.from_rotvec(ours).as_matrix(), Rotation.from_euler("xyz", rpy).as_matrix(), atol=1e-9
    )


def test_tiny_rotations_are_accurate():
    rpy = np.array([1e-9, -2e-9, 3e-9])
    np.testing.assert_allclose(euler_to_axis_angle(rpy), scipy_rotvec(rpy), rtol=1e-6, atol=1e-18)


def test_bridge_gripper_hand_computed():
    np.testing.assert_array_equal(bridge_gripper([0.0, 0.2, 0.5, 0.5001, 0.9, 1.0]), [-1, -1, -1, 1, 1, 1])


def test_bridge_action_hand_computed():
    raw = np.array([[0.01, -0.02, 0.03, 0.0, 0.0, 0.1, 0.996], [0.0, 0.0, -0.01, 0.2, 0.0, 0.0, 0.1]])
    expected = np.array([[0.01, -0.02, 0.03, 0.0, 0.0, 0.1, 1.0], [0.0, 0.0, -0.01, 0.2, 0.0, 0.0, -1.0]])
    out = bridge_action(raw)
    assert out.dtype == np.float32 and out.shape == (2, 7)
    np.testing.assert_allclose(out, expected, atol=1e-7)


@pytest.mark.parametrize(
    "bad", [np.zeros(6), np.zeros((2, 8)), [0, 0, 0, np.nan, 0, 0, 1], [0, 0, 0, 0, 0, np.inf, 1]]
)
def test_bridge_action_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        bridge_action(bad)


def test_axis_angle_to_euler_matches_scipy():
    rng = np.random.default_rng(0)
    rotvecs = Rotation.random(200, random_state=1).as_rotvec() * rng.uniform(0.0, 1.0, (200, 1))
    np.testing.assert_allclose(axis_angle_to_euler(rotvecs), Rotation.from_rotvec(rotvecs).as_euler("xyz"),
                               atol=1e-9)
    np.testing.assert_allclose(axis_angle_to_euler(np.zeros(3)), np.zeros(3))


def test_demonstrations_go_back_to_openvla_actions_exactly():
    """What a bridge_orig policy learns from a demonstration decodes back into that demonstration."""
    rng = np.random.default_rng(2)
    rpy = rng.uniform(-0.2, 0.2, (50, 3))
    env_actions = np.concatenate([rng.uniform(-0.03, 0.03, (50, 3)), scipy_rotvec(rpy),
                                  rng.choice([-1.0, 1.0], (50, 1))], axis=1)
    model = bridge_action_inverse(env_actions)
    np.testing.assert_allclose(model[:, 3:6], rpy, atol=1e-6)
    assert set(np.unique(model[:, 6])) <= {0.0, 1.0} and np.all((model[:, 6] == 1) == (env_actions[:, 6] > 0))
    np.testing.assert_allclose(bridge_action(model), env_actions, atol=1e-6)


def test_bridge_bounds_hold_every_bridge_orig_action():
    """The Bridge task's action space must not clip anything OpenVLA can emit with bridge_orig statistics."""
    from vla_cl.envs.bridge import ROTATION_LIMIT, TRANSLATION_LIMIT

    low, high = np.array(BRIDGE_ORIG_Q01), np.array(BRIDGE_ORIG_Q99)
    assert np.all(np.abs(low[:3]) < TRANSLATION_LIMIT) and np.all(np.abs(high[:3]) < TRANSLATION_LIMIT)
    grid = np.stack(np.meshgrid(*[np.linspace(low[i], high[i], 9) for i in range(3, 6)], indexing="ij"), -1)
    rotvecs = scipy_rotvec(grid.reshape(-1, 3))
    assert np.abs(rotvecs).max() < ROTATION_LIMIT


def test_google_robot_gripper_is_relative_and_sticky():
    gripper = GoogleRobotGripper()
    openness = [1.0, 1.0, 0.0] + [0.0] * 16 + [1.0, 1.0]
    commands = [gripper(g) for g in openness]
    # Step 0: no previous -> 0. Step 1: 1 - 1 = 0. Step 2: 1 - 0 = +1 (close), then held for 15 steps (2..16).
    # Steps 17, 18: 0 - 0 = 0. Step 19: 0 - 1 = -1 (open), sticky again; step 20 holds it.
    assert commands == [0.0, 0.0] + [1.0] * 15 + [0.0, 0.0] + [-1.0, -1.0]


def test_google_robot_gripper_ignores_the_model_while_sticky_and_resets():
    gripper = GoogleRobotGripper(repeat=3)
    # Close at step 1; the model's reopening at step 2 is swallowed by the sticky close (steps 1..3).
    # At step 4 the previous openness is 1.0 again and the model says 1.0, so the command is 0.
    assert [gripper(g) for g in [1.0, 0.0, 1.0, 1.0, 1.0]] == [0.0, 1.0, 1.0, 1.0, 0.0]
    gripper.reset()
    assert gripper(0.0) == 0.0  # first step of an episode: no previous openness


def test_google_robot_small_changes_pass_through_unsticky():
    gripper = GoogleRobotGripper()
    commands = [gripper(g) for g in [0.5, 0.2, 0.4]]
    np.testing.assert_allclose(commands, [0.0, 0.3, -0.2])


def test_google_robot_actions_compose_rotation_and_gripper():
    actions = GoogleRobotActions()
    first = actions([0.01, 0.0, 0.0, 0.0, 0.0, 0.2, 1.0])
    second = actions([0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(first, [0.01, 0, 0, 0, 0, 0.2, 0.0], atol=1e-7)
    np.testing.assert_allclose(second, [0, 0, 0, 0.1, 0, 0, 1.0], atol=1e-7)
    with pytest.raises(ValueError):
        actions(np.zeros((2, 7)))
