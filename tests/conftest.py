"""Shared test settings: offline, single-threaded, and the shared offline asset root when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_ASSETS = REPO.parent / "shared" / "assets" / "maniskill"
if SHARED_ASSETS.is_dir():  # the offline Bridge assets, read in place (tests of missing assets set their own)
    os.environ.setdefault("MS_ASSET_DIR", str(SHARED_ASSETS))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def simulation_required() -> bool:
    """Simulation tests fail (never skip) unless the user set up without Vulkan on purpose."""
    return os.environ.get("VLA_CL_VULKAN", "auto") != "skip"


@pytest.fixture
def needs_sim():
    if not simulation_required():
        pytest.skip("VLA_CL_VULKAN=skip: set up without simulation")
