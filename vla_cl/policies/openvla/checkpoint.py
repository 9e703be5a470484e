"""Read and write checkpoints in the layout of the public ``openvla/openvla-7b`` Hugging Face repo.

A checkpoint folder holds ``config.json`` (OpenVLA's fields, ``norm_stats`` included), the weights as
``model-0000i-of-0000N.safetensors`` shards with ``model.safetensors.index.json`` (or one
``model.safetensors``), and the instruction tokenizer's files. Tensors are read with safetensors only
(never pickle) and copied shard by shard into an already allocated model, so loading needs the
model's memory plus one tensor, not twice the model. Loading is strict: every difference between the
checkpoint's tensors and the model's parameters is reported with names and expected shapes, and a
tensor holding NaN or infinite values is refused, naming its shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_cl.hub import hub_unreachable
from vla_cl.policies.openvla.config import OpenVLAConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# What a hub download fetches: config, weights, tokenizer (not the remote code, which we never run).
HUB_PATTERNS = ["config.json", "*.safetensors", INDEX_FILE, "tokenizer*", "special_tokens_map.json",
                "added_tokens.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHOW = 5  # how many offending names an error lists


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a hub repo id downloaded with ``huggingface_hub.snapshot_download``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    if not _REPO_ID.match(str(name_or_path)):
        raise ValueError(f"{name_or_path!r} is neither a folder nor a Hugging Face repo id (owner/name)")
    local_only = hub_unreachable()
    if local_only:
        from huggingface_hub import snapshot_download

        try:  # a copy already in the hub cache still loads offline
            return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=HUB_PATTERNS,
                                          local_files_only=True))
        except Exception:  # noqa: BLE001 (not cached: the message below says what to do)
            raise RuntimeError(
                f"cannot fetch {name_or_path!r}: the Hugging Face hub is not reachable ({local_only}). Download it "
                f"on a machine with network access (`huggingface-cli download {name_or_path} --local-dir DIR`) "
                "and pass DIR, a local checkpoint folder, instead.") from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # offline, unknown repo, gated, network: all end the same way for the user
        raise RuntimeError(
            f"could not fetch {name_or_path!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            "Without network access, download it elsewhere (`huggingface-cli download "
            f"{name_or_path} --local-dir DIR`) and pass DIR instead."
        ) from error


def is_finetuning_checkpoint(folder: Path) -> bool:
    """A folder written by ``OpenVLAPolicy.save_pretrained`` for a policy with adapters (this library's
    generic checkpoint format), rather than a checkpoint in OpenVLA's layout."""
    from vla_cl.policies.checkpoint import FORMAT

    try:
        return json.loads((folder / "config.json").read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def read_config(folder: Path) -> OpenVLAConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not an OpenVLA checkpoint: it has no config.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    return OpenVLAConfig.from_dict(data)


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (not a dict)


def tensor_index(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """name -> (shard file, shape) for every tensor of the checkpoint, read from the shards' headers."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        weight_map: Mapping[str, str] = json.loads(index_path.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        weight_map, files = {}, [SINGLE_FILE]
    else:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {found}: pickled weights are never loaded; convert them to safetensors)" if found else ""
        raise ValueError(f"{folder} has no {INDEX_FILE} or {SINGLE_FILE}{hint}")
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for name in files:
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{INDEX_FILE} names shard {name}, which is missing from {folder}")
        for tensor, shape in _header_shapes(file).items():
            if tensor in out:
                raise ValueError(f"tensor {tensor} appears in both {out[tensor][0].name} and {name}")
            out[tensor] = (file, shape)
    misplaced = [k for k, f in weight_map.items() if k not in out or out[k][0].name != f]
    if misplaced:
        raise ValueError(f"{INDEX_FILE} disagrees with the shards for {len(misplaced)} tensors, "
                         f"e.g. {misplaced[:_SHOW]}")
    return out


@torch.no_grad()
def load_tensors(module: nn.Module, index: Mapping[str, tuple[Path, tuple[int, ...]]]) -> None:
    """Copy every tensor into the parameter of the same name, one shard and one tensor at a time; a tensor
    holding NaN or infinite values is refused (ValueError naming the shard and the tensor)."""
    from safetensors import safe_open

    from vla_cl.policies.checkpoint import check_finite

    params = dict(module.named_parameters())
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in index.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in names:
                tensor = handle.get_tensor(name)
                check_finite({name: tensor}, file)
                params[name].copy_(tensor)


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size must be bytes or like '5GB', got {size!r}")
    return int(float(match.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)])


def save_tensors(
    folder: Path,
    tensors: Iterable[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]],
    max_shard_size: int | str = "5GB",
) -> list[Path]:
    """Write ``(name, shape, dtype, make_tensor)`` entries as HF-style shards plus the index.

    Shards are planned from shapes first (file names need the shard count), then each shard's tensors
    are made, written and dropped, so a merged 7B checkpoint never exists twice in memory.
    """
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    shards: list[list[tuple[str, Callable[[], torch.Tensor]]]] = [[]]
    shard_bytes, total = 0, 0
    for name, shape, dtype, make in tensors:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if shards[-1] and shard_bytes + size > limit:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((name, make))
        shard_bytes += size
        total += size
    folder.mkdir(parents=True, exist_ok=True)
    weight_map, files = {}, []
    for i, shard in enumerate(shards, start=1):
        file = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: make().detach().contiguous().cpu() for name, make in shard}, str(file),
                  metadata={"format": "pt"})
        weight_map.update({name: file.name for name, _ in shard})
        files.append(file)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def write_config(folder: Path, config: dict[str, Any], torch_dtype: torch.dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = dict(config)
    data["torch_dtype"] = str(torch_dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
