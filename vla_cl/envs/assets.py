"""Check that the ManiSkill3 assets a task needs are on disk before ManiSkill is asked to create it.

ManiSkill3 handles a missing asset badly for unattended use: it prompts on stdin, calls ``exit()`` when
the answer is no, and a failed download leaves an EMPTY folder that later runs take as present. Task
factories therefore call :func:`check_assets` first; it only reads the disk (never creates, downloads
or prompts) and raises :class:`MissingAssetError`, which names each missing asset id, the folder
searched and the command that downloads it.

The asset root is the folder ManiSkill calls ``MS_ASSET_DIR`` (default ``~/.maniskill``); an asset id
maps to a folder under it. :data:`KNOWN_ASSETS` lists the ids this project uses, with the files that
prove a download is complete; any other ManiSkill asset id is looked up in ManiSkill's own table of
data sources (which imports ManiSkill).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path

ASSET_DIR_VAR = "MS_ASSET_DIR"
DEFAULT_ROOT = Path("~/.maniskill")
DOWNLOAD_COMMAND = "python -m mani_skill.utils.download_asset {asset_id}"


@dataclasses.dataclass(frozen=True)
class AssetLayout:
    """Where a ManiSkill asset id lives under the asset root, and which files prove it is complete."""

    folder: str  # relative to the asset root, e.g. "data/robots/widowx"
    required: tuple[str, ...] = ()  # files (relative to ``folder``) that must exist


# ManiSkill's download targets are ``<root>/data/<DataSource.target_path>``.
KNOWN_ASSETS: dict[str, AssetLayout] = {
    "bridge_v2_real2sim": AssetLayout(
        "data/tasks/bridge_v2_real2sim_dataset",
        (
            "custom/info_bridge_custom_v0.json",
            "custom/info_bridge_custom_baked_tex_v0.json",
            "real_inpainting/bridge_real_eval_1.png",
            "real_inpainting/bridge_sink.png",
        ),
    ),
    "widowx250s": AssetLayout("data/robots/widowx", ("wx250s.urdf",)),
    "ycb": AssetLayout("data/assets/mani_skill2_ycb", ("info_pick_v0.json",)),
}


@dataclasses.dataclass(frozen=True)
class MissingAsset:
    asset_id: str
    folder: Path  # the folder that was searched
    problem: str  # what is wrong with it, in words

    @property
    def command(self) -> str:
        return DOWNLOAD_COMMAND.format(asset_id=self.asset_id)


class MissingAssetError(FileNotFoundError):
    """One or more ManiSkill assets are not on disk; the message says which, where and how to get them."""

    def __init__(self, missing: Iterable[MissingAsset], root: Path, needed_by: str = ""):
        self.missing = tuple(missing)
        self.root = Path(root)
        self.asset_ids = tuple(m.asset_id for m in self.missing)
        self.commands = tuple(f"{ASSET_DIR_VAR}={self.root} {m.command}" for m in self.missing)
        who = f"{needed_by} needs ManiSkill asset(s) that are" if needed_by else "ManiSkill asset(s)"
        lines = [f"{who} missing under {ASSET_DIR_VAR}={self.root}:"]
        lines += [f"  - {m.asset_id}: {m.folder} {m.problem}" for m in self.missing]
        lines.append("Download with (needs internet):")
        lines += [f"  {command}" for command in self.commands]
        lines.append(f"or set {ASSET_DIR_VAR} to a folder that holds them.")
        super().__init__("\n".join(lines))


def asset_root(root: str | Path | None = None) -> Path:
    """The asset root: ``root`` if given, else ``$MS_ASSET_DIR``, else ``~/.maniskill`` (ManiSkill's rule)."""
    chosen = root if root is not None else os.environ.get(ASSET_DIR_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def layout_of(asset_id: str) -> AssetLayout:
    """The folder (and proof files) of an asset id; ids this project does not list come from ManiSkill."""
    if asset_id in KNOWN_ASSETS:
        return KNOWN_ASSETS[asset_id]
    from vla_cl.envs.maniskill import import_maniskill

    import_maniskill()
    from mani_skill.utils.assets.data import DATA_SOURCES

    if asset_id not in DATA_SOURCES or not DATA_SOURCES[asset_id].target_path:
        known = sorted(set(KNOWN_ASSETS) | set(DATA_SOURCES))
        raise ValueError(f"unknown ManiSkill asset id {asset_id!r}; known ids: {', '.join(known)}")
    return AssetLayout(f"data/{DATA_SOURCES[asset_id].target_path}")


def asset_path(asset_id: str, root: str | Path | None = None) -> Path:
    """Where ``asset_id`` must be under the asset root."""
    return asset_root(root) / layout_of(asset_id).folder


def find_missing(asset_ids: Iterable[str], root: str | Path | None = None) -> list[MissingAsset]:
    """The assets among ``asset_ids`` that are absent, empty or incomplete; reads the disk, writes nothing."""
    base = asset_root(root)
    missing = []
    for asset_id in asset_ids:
        layout = layout_of(asset_id)
        folder = base / layout.folder
        if not folder.is_dir():
            problem = "does not exist"
        elif not any(folder.iterdir()):
            problem = (
                "is empty (an interrupted download leaves an empty folder; delete it and download again)"
            )
        else:
            absent = [name for name in layout.required if not (folder / name).exists()]
            problem = f"lacks {', '.join(absent)} (incomplete download?)" if absent else ""
        if problem:
            missing.append(MissingAsset(asset_id, folder, problem))
    return missing


def check_assets(asset_ids: Iterable[str], root: str | Path | None = None, needed_by: str = "") -> Path:
    """Raise :class:`MissingAssetError` unless every asset is on disk; returns the asset root."""
    base = asset_root(root)
    missing = find_missing(asset_ids, base)
    if missing:
        raise MissingAssetError(missing, base, needed_by)
    return base


def maniskill_asset_root() -> Path:
    """The asset root ManiSkill itself reads: the one resolved at its first import, else :func:`asset_root`.

    ManiSkill reads ``MS_ASSET_DIR`` once, at import, and bakes the path into module constants, so a
    later change of the variable does not move them. A task factory that cannot re-point those constants
    (as :func:`vla_cl.envs.bridge.point_maniskill_at` does for the Bridge scenes) should check this root.
    """
    module = sys.modules.get("mani_skill")
    asset_dir = getattr(module, "ASSET_DIR", None)
    return asset_root() if asset_dir is None else Path(asset_dir).parent.resolve()
