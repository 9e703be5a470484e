"""Point SAPIEN at a Vulkan driver it accepts before ManiSkill3 is imported.

SAPIEN 3 needs Vulkan even for state-only simulation. On a CPU-only Debian bookworm machine the
system lavapipe (Mesa 22) lacks ``descriptorBindingPartiallyBound`` and SAPIEN reports no usable
device, so ``make setup`` unpacks Mesa 25 lavapipe into ``.venv/vulkan`` and writes an ICD file for
it. This module selects that ICD for the current process when the user has not chosen a driver.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from pathlib import Path

ICD_ENV_VARS = ("VK_ICD_FILENAMES", "VK_DRIVER_FILES")


def private_icd() -> Path | None:
    """The ICD file ``make setup`` writes into the active virtual environment, if there is one."""
    candidate = Path(sys.prefix) / "vulkan" / "lvp_icd.json"
    return candidate if candidate.exists() else None


def configure_vulkan() -> str:
    """Select a Vulkan driver for SAPIEN; returns a short description of the choice.

    An explicit ``VK_ICD_FILENAMES``/``VK_DRIVER_FILES`` always wins. Otherwise the private lavapipe
    is used when present; its newer libdrm is preloaded so the driver never binds the older system copy.
    """
    # SAPIEN falls back to its bundled Vulkan loader when the system has none; that is fine, not news.
    warnings.filterwarnings("ignore", message="Failed to find system libvulkan")
    for var in ICD_ENV_VARS:
        if os.environ.get(var):
            return f"{var}={os.environ[var]}"
    icd = private_icd()
    if icd is None:
        return "system default"
    os.environ["VK_ICD_FILENAMES"] = str(icd)
    libdir = icd.parent / "usr" / "lib" / "x86_64-linux-gnu"
    for name in ("libdrm.so.2", "libdrm_amdgpu.so.1"):
        if (libdir / name).exists():
            ctypes.CDLL(str(libdir / name), mode=ctypes.RTLD_GLOBAL)
    return f"private lavapipe {icd}"
