"""Resumable training checkpoints: policy weights, optimiser state and progress counters.

Layout under ``<run_dir>/artifacts/checkpoints/``::

    iter-000012/
      policy/                        the policy (its own checkpoint format: config.json + model.safetensors)
      training_state.safetensors     optimiser state tensors (AdamW moments, step counts)
      training_state.json            iteration, counters, seed, optimiser scalars
    latest                           the name of the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder, renamed into place, and only then does
``latest`` (itself replaced atomically) point at it; the newest ``keep`` (2) are kept and older ones removed
last. A process killed at any moment therefore leaves ``latest`` naming a complete checkpoint (or no
``latest`` at all), and ``load_checkpoint`` removes whatever a killed save left behind. A checkpoint that
cannot be read (a damaged disk, a file truncated by hand, a missing ``latest``) is reported and the
previous one is used instead. Nothing is pickled: tensors go through
safetensors, everything else through JSON.

``truncate_metrics`` drops the metrics lines a killed run wrote after its last checkpoint, so that the
resumed run's ``metrics.jsonl`` is line for line what an uninterrupted run writes.

No global RNG state is saved: every draw of the loop comes from a generator seeded from (seed, stream,
iteration), and torch's global generator is seeded the same way before each update (``vla_cl.updaters.loop``).
Checkpoints written before that change also hold RNG states, which loading ignores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vla_cl.files import filter_jsonl, write_json_atomic, write_text_atomic

FORMAT = "vla_cl.training_state"
FORMAT_VERSION = 1
LATEST = "latest"
TENSORS_FILE = "training_state.safetensors"
STATE_FILE = "training_state.json"
POLICY_FOLDER = "policy"




# ------------------------------------------------------------------------------------------ state <-> files


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's per-parameter state as tensors (``optimizer.<index>.<name>``) plus JSON scalars."""
    from vla_cl.updaters.distributed import whole

    tensors, scalars = {}, {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):  # sharded (fsdp) state gathered whole
                tensors[f"optimizer.{index}.{name}"] = whole(value.detach()).cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      scalars: dict[str, Any]) -> None:
    """Load state written by ``optimizer_state`` into an optimiser over the same parameters (its
    hyperparameters stay as constructed; the loop sets the learning rate every step)."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    for key, value in scalars.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    if state and max(state) >= n_params:
        raise ValueError(f"the checkpoint's optimiser has state for parameter {max(state)}, this one has {n_params}")
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(root: Path, iteration: int, policy: Any, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any], keep: int = 2, write: bool = True) -> Path:
    """Write the checkpoint after ``iteration`` (``progress``: JSON counters), point ``latest`` at it and
    remove all but the ``keep`` newest. Every process of a distributed learner calls it (the optimiser's
    sharded state is gathered); only the one with ``write`` writes."""
    from safetensors.torch import save_file

    optim_tensors, optim_scalars = optimizer_state(optimizer)
    root = Path(root)
    if not write:
        return root / f"iter-{iteration:06d}"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter-{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    policy.save_pretrained(tmp / POLICY_FOLDER)
    save_file(optim_tensors, str(tmp / TENSORS_FILE))
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "iteration": iteration, **progress,
              "optimizer": optim_scalars}
    write_json_atomic(tmp / STATE_FILE, record)
    final = root / name
    if final.exists():  # a killed save renamed it but never pointed ``latest`` at it
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_text_atomic(root / LATEST, name)
    _remove_others(root, keep=_saved(root)[:keep])
    return final


def _saved(root: Path) -> list[str]:
    """Complete checkpoint folders, newest first (temporary folders of a killed save start with a dot)."""
    return sorted((e.name for e in root.iterdir() if e.is_dir() and e.name.startswith("iter-")), reverse=True)


def _remove_others(root: Path, keep: list[str]) -> None:
    for entry in root.iterdir():
        if entry.name not in (*keep, LATEST) and entry.is_dir():
            shutil.rmtree(entry)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest`` names, or (when ``latest`` is missing or unreadable) the newest complete one."""
    root = Path(root)
    pointer = root / LATEST
    try:
        folder = root / pointer.read_text().strip()
        if folder.is_dir() and folder.name.startswith("iter-"):
            return folder
    except (OSError, UnicodeDecodeError):
        pass
    saved = _saved(root) if root.is_dir() else []
    return root / saved[0] if saved else None


def load_checkpoint(root: Path, policy: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore the newest checkpoint under ``root`` into ``policy`` (weights, in place) and ``optimizer``
    returns its JSON record, or None (after cleaning up) when there is none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vla_cl.policies.checkpoint import load_checkpoint_into

    root = Path(root)
    if not root.is_dir():
        return None
    newest = latest_checkpoint(root)
    saved = _saved(root)
    _remove_others(root, keep=saved)  # what a killed save left half-written
    if newest is None:
        return None
    candidates = [newest.name, *[name for name in saved if name < newest.name]]
    for i, name in enumerate(candidates):
        folder = root / name
        try:
            record = json.loads((folder / STATE_FILE).read_text())
            if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{folder / STATE_FILE} is not a {FORMAT} v{FORMAT_VERSION} file")
            tensors = load_file(str(folder / TENSORS_FILE))
            load_checkpoint_into(policy, folder / POLICY_FOLDER)  # validated (digest, names, shapes), in place
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            older = candidates[i + 1] if i + 1 < len(candidates) else None
            print(f"[train] checkpoint {folder} is unreadable ({str(error).splitlines()[0]}); "
                  + (f"falling back to {older}" if older else "no older checkpoint is left"), flush=True)
            if older is None:
                raise ValueError(f"no readable checkpoint in {root} (the newest, {candidates[0]}, and every older "
                                 "one failed to load); delete the run folder to start over") from error
            continue
        restore_optimizer(optimizer, tensors, record["optimizer"])
        if i:  # later folders are unreadable: the run continues from this one and will overwrite them
            write_text_atomic(root / LATEST, name)
        return record
    return None


def truncate_metrics(path: Path, last_iteration: int) -> int:
    """Keep the metrics lines of iterations <= ``last_iteration`` (dropping later and unreadable ones);
    returns how many lines were dropped."""
    return filter_jsonl(path, lambda record: isinstance(record, dict)
                        and record.get("iteration", -1) <= last_iteration)
