"""The generic policy checkpoint: a folder with ``config.json`` and ``model.safetensors``.

``config.json`` holds everything needed to rebuild the policy and act exactly as it did::

    {"format": "vla_cl.policy", "format_version": 1,
     "policy": "<registry name>", "config": <policy.config_dict()>,
     "tokenizer": {"vocab_size": ..., "n_bins": ..., "stats": {"q01": [...], "q99": [...], "mask": [...]} | null},
     "action_dim": 7, "weights_sha256": "<hex digest of model.safetensors>", "metadata": {...}}

The action statistics travel with the weights, so a loaded policy un-normalises its actions without
being told a dataset name. Floats go through JSON as Python's shortest round-trip repr, so the
statistics come back bit for bit.

Loading validates before building anything from the weights: the folder must carry this format (a
foreign folder or an unknown version is named as such), the recorded policy must match, the weights'
digest must match (a truncated or altered file is reported as corrupt), and the tensor names and
shapes must be exactly the policy's (missing, unexpected and mis-shaped names are listed, first few),
and every floating-point tensor must be finite (a run that diverged and saved NaN weights would otherwise
evaluate as a policy that merely fails every episode). Tensors are read with safetensors and the config
with json: nothing is ever unpickled.

Saving is atomic: everything is written into a temporary sibling folder and renamed into place, so an
interrupted save leaves either the previous checkpoint or none, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

    from vla_cl.tokenizer import ActionTokenizer

FORMAT = "vla_cl.policy"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHOWN = 5  # names listed per kind of mismatch


class Checkpointable(Protocol):
    """What this format reads from a policy and writes into one; ``vla_cl.policies.base.Policy`` offers it all.

    Named here rather than imported, so that the format depends on no policy class: ``Policy`` uses it for its
    default ``save_pretrained`` / ``from_pretrained``, and the dependency points one way."""

    name: ClassVar[str]
    tokenizer: ActionTokenizer
    action_dim: int

    def config_dict(self) -> dict[str, Any]: ...

    def checkpoint_state(self) -> Mapping[str, torch.Tensor]: ...

    def load_checkpoint_state(self, tensors: Mapping[str, torch.Tensor]) -> None: ...

    def eval(self) -> Any: ...  # torch.nn.Module's: a loaded policy acts in eval mode

    @classmethod
    def from_checkpoint_config(cls, tokenizer: ActionTokenizer, config: Mapping[str, Any]) -> Checkpointable: ...


P = TypeVar("P", bound=Checkpointable)


def _first(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder; ValueError naming what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ValueError(f"{folder} {what}; pass a checkpoint folder holding {CONFIG_FILE} + {WEIGHTS_FILE}")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a policy checkpoint: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is corrupt: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is corrupt: expected a JSON object, got {type(config).__name__}")  # noqa: TRY004
    return config


# ---------------------------------------------------------------------------------------- tokenizer


def tokenizer_to_json(tokenizer: ActionTokenizer) -> dict[str, Any]:
    stats = tokenizer.stats
    return {
        "vocab_size": int(tokenizer.vocab_size),
        "n_bins": int(tokenizer.n_bins),
        "stats": None
        if stats is None
        else {"q01": stats.q01.tolist(), "q99": stats.q99.tolist(), "mask": stats.mask.tolist()},
    }


def tokenizer_from_json(data: Any, where: str) -> ActionTokenizer:
    from vla_cl.tokenizer import ActionTokenizer, NormStats

    if not isinstance(data, dict) or not {"vocab_size", "n_bins", "stats"} <= set(data):
        raise ValueError(f"{where}: 'tokenizer' must hold vocab_size, n_bins and stats, got {data!r:.200}")
    stats = data["stats"]
    try:
        norm = None if stats is None else NormStats.from_checkpoint(stats)
        return ActionTokenizer(vocab_size=data["vocab_size"], n_bins=data["n_bins"], stats=norm)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: invalid tokenizer settings: {error}") from None


# ---------------------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _is_generic_checkpoint(folder: Path) -> bool:
    try:
        return read_config_json(folder).get("format") == FORMAT
    except ValueError:
        return False


def write_checkpoint(policy: Checkpointable, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``policy`` in the generic format (atomically; see the module docstring). An existing
    checkpoint of this format at ``folder`` is replaced; any other non-empty folder is refused."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not (
        folder.is_dir() and (not any(folder.iterdir()) or _is_generic_checkpoint(folder))
    ):
        raise ValueError(
            f"{folder} exists and is not a {FORMAT} checkpoint; refusing to overwrite it (choose another folder)"
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy": policy.name,
        "config": policy.config_dict(),
        "tokenizer": tokenizer_to_json(policy.tokenizer),
        "action_dim": int(policy.action_dim),
        "metadata": dict(metadata or {}),
    }
    try:  # fail before touching the disk, naming the culprit
        json.dumps(config["config"], allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"config_dict() of policy {policy.name!r} is not JSON-serialisable: {error}"
        ) from None
    try:
        json.dumps(config["metadata"], allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from None
    # Clones: safetensors refuses views and tensors sharing storage.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in policy.checkpoint_state().items()}

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".saving", dir=folder.parent))
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE))
        _fsync(staging / WEIGHTS_FILE)
        config["weights_sha256"] = _sha256(staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
        _fsync(staging / CONFIG_FILE)
        if folder.exists():
            # Two renames: the old checkpoint moves aside whole, the new one arrives whole.
            retired = staging.with_suffix(".replaced")
            os.rename(folder, retired)
            os.rename(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


# ---------------------------------------------------------------------------------------- reading


def check_header(config: Mapping[str, Any], folder: Path, name: str | None) -> None:
    """Raise ValueError unless ``config`` is this format, a known version and (if given) policy ``name``."""
    where = folder / CONFIG_FILE
    found = config.get("format")
    if found != FORMAT:
        raise ValueError(
            f"{folder} is not a {FORMAT} checkpoint ({where} has format {found!r}"
            + (f", model_type {config['model_type']!r}" if "model_type" in config else "")
            + "); load it with the library that wrote it"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {version!r}; this vla_cl reads versions 1..{FORMAT_VERSION} "
            "(a newer vla_cl wrote it: upgrade)"
        )
    missing = [
        k for k in ("policy", "config", "tokenizer", "action_dim", "weights_sha256") if k not in config
    ]
    if missing:
        raise ValueError(f"{where} is incomplete: missing {missing}")
    if name is not None and config["policy"] != name:
        raise ValueError(f"{folder} holds a {config['policy']!r} policy, not {name!r}; use load_policy()")


def _tensor_index(path: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape from the safetensors header (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is corrupt: not a readable safetensors file ({error})") from None


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """ValueError listing missing, unexpected and mis-shaped tensors (first few of each), if any."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{name}: checkpoint {list(found[name])}, expected {list(expected[name])}"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name]) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append(f"missing parameters: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected parameters: {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_first(shapes)}")
    if problems:
        raise ValueError(f"{where} does not match the policy its config describes; " + "; ".join(problems))


def check_finite(tensors: Mapping[str, torch.Tensor], file: str | Path) -> None:
    """ValueError naming ``file`` and the first tensor (by name) holding NaN or infinite values.

    Every reader of policy weights calls this on what it read (the generic format here, OpenVLA's shards
    tensor by tensor, its peft adapter folders), so a checkpoint of any kind is refused where it is loaded. One ``isfinite`` pass
    per floating-point tensor; the counts in the message are computed only for the bad one."""
    import torch

    for name in sorted(tensors):
        tensor = tensors[name]
        if not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all()):
            continue
        nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        raise ValueError(
            f"{file} holds non-finite weights: tensor {name} has {nan} NaN and {inf} infinite values (of "
            f"{tensor.numel()}); the run that saved it likely diverged. Use an earlier checkpoint of it, or train "
            "again with a lower learning rate"
        )


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a generic checkpoint's ``model.safetensors``, refused if any is not finite."""
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    check_finite(tensors, weights)
    return tensors


def _verified_weights(folder: Path, config: Mapping[str, Any]) -> Path:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{folder} is an incomplete checkpoint: it has no {WEIGHTS_FILE}")
    if _sha256(weights) != config["weights_sha256"]:
        raise ValueError(f"{weights} is corrupt: its SHA-256 differs from the one recorded in {CONFIG_FILE}")
    return weights


def load_checkpoint_into(policy: Checkpointable, folder: str | Path) -> dict[str, Any]:
    """Load a checkpoint of the same policy into ``policy`` in place (resuming a run: nothing is rebuilt,
    an adapter policy's base stays as it is). Checked: format, policy name, digest, tensor names and
    shapes. Returns the checkpoint's config.json."""
    folder = Path(folder)
    config = read_config_json(folder)
    check_header(config, folder, policy.name)
    weights = _verified_weights(folder, config)
    expected = {name: tuple(t.shape) for name, t in policy.checkpoint_state().items()}
    check_tensors(expected, _tensor_index(weights), str(weights))
    policy.load_checkpoint_state(read_weights(weights))  # checked before anything is copied in
    return config


def read_checkpoint(folder: str | Path, cls: type[P]) -> P:
    """Rebuild the policy saved by ``write_checkpoint``; the checkpoint must hold a ``cls`` policy (any
    saved policy, whatever its class: ``vla_cl.policies.load_policy``)."""
    folder = Path(folder)
    config = read_config_json(folder)
    check_header(config, folder, cls.name)
    weights = _verified_weights(folder, config)
    tokenizer = tokenizer_from_json(config["tokenizer"], str(folder / CONFIG_FILE))
    options = config["config"]
    if not isinstance(options, dict):
        raise ValueError(  # noqa: TRY004 (a malformed file, not a caller's type error)
            f"{folder / CONFIG_FILE}: 'config' must be an object, got {type(options).__name__}"
        )
    try:
        policy = cls.from_checkpoint_config(tokenizer, options)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{folder}: the recorded config does not build a {cls.name!r} policy: {error}"
        ) from None
    if policy.action_dim != config["action_dim"]:
        raise ValueError(
            f"{folder}: config.json records action_dim {config['action_dim']}, the rebuilt policy has "
            f"{policy.action_dim}"
        )
    expected = {name: tuple(t.shape) for name, t in policy.checkpoint_state().items()}
    check_tensors(expected, _tensor_index(weights), str(weights))
    policy.load_checkpoint_state(read_weights(weights))
    return policy.eval()
