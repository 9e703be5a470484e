"""Small rotation conversions (numpy only) shared by the action adapters and the scripted experts.

Conventions: quaternions are (w, x, y, z); ``euler_xyz`` angles (a, b, c) mean R = Rx(a) @ Ry(b) @ Rz(c)
(intrinsic X-Y-Z, as ManiSkill's ``euler_angles_to_matrix(..., "XYZ")``); a rotation vector is the
axis times the angle in radians.
"""

from __future__ import annotations

import numpy as np


def matrix_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    skew = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1.0 - np.cos(angle)) * (skew @ skew)


def euler_xyz_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Angles (a, b, c) with matrix = Rx(a) @ Ry(b) @ Rz(c); b in [-pi/2, pi/2]."""
    m = np.asarray(matrix, dtype=np.float64)
    b = np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    a = np.arctan2(-m[1, 2], m[2, 2])
    c = np.arctan2(-m[0, 1], m[0, 0])
    return np.array([a, b, c])


def euler_xyz_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    return euler_xyz_from_matrix(matrix_from_rotvec(rotvec))


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotvec_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matrix_from_rotvec` (angle in [0, pi])."""
    m = np.asarray(matrix, dtype=np.float64)
    cos = np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if angle > np.pi - 1e-6:
        # Near pi the antisymmetric part vanishes; read the axis from the symmetric part instead.
        axis = np.sqrt(np.clip((np.diag(m) + 1.0) / 2.0, 0.0, None))
        i = int(np.argmax(axis))
        axis = m[:, i] + m[i, :]
        axis[i] = 2.0 * (m[i, i] + 1.0)
        return angle * axis / np.linalg.norm(axis)
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2.0 * np.sin(angle))
    return angle * axis


def wrap_angle(angle: float) -> float:
    """Angle in (-pi, pi]."""
    return float(np.arctan2(np.sin(angle), np.cos(angle)))
