"""Demonstration datasets: scripted-expert episodes written to disk for supervised fine-tuning.

Format (version 1): a folder holding two files.

``demos.safetensors`` — one row per step, every array with the same number of rows N:

    state          (N, S) float32   the observation's state vector (obs_mode state/both)
    image          (N, H, W, 3) uint8  the observation image (obs_mode rgb/both)
    action         (N, 7) float32   the PHYSICAL action taken (xyz m, rotation rad, gripper +-1)
    reward         (N,)   float32
    episode_index  (N,)   int64     0..E-1, consecutive, rows of an episode contiguous and in step order
    step           (N,)   int64     0-based step within the episode
    success        (N,)   bool      info["success"] after the step

``demos.json`` — ``format_version``, ``task_id``, ``instruction`` (the task's) and ``instructions`` (one per
episode), ``obs_mode``, ``state_dim``, ``image_size``, ``action_stats`` (the env's q01/q99/mask over its
action space, what a policy's ActionTokenizer normalises with), ``action_quantiles`` (the 1st/99th
percentiles of the recorded actions), ``env_options``, ``episode_seeds``, ``episode_lengths``,
``counts`` (episodes kept, steps, episodes attempted), ``success_rate`` (over the attempts),
``only_success`` and ``created``.

:func:`load_demos` reads and validates a folder (or a ``vla-cl demos`` run directory); ``vla-cl demos``
writes one (:func:`run`).

A folder holds a complete set or none: both files are written atomically (``vla_cl.files``), the arrays
first and ``demos.json`` last, after removing the old ``demos.json``, so ``demos.json`` beside
``demos.safetensors`` marks a finished set. ``vla-cl demos`` run again on a folder with a complete set
reuses it (no simulation, no new metrics); on a folder without one (an interrupted collection) it drops
that collection's metrics lines and starts over.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.envs.registry import OBS_MODES, get_spec
from vla_cl.files import atomic_path, filter_jsonl, write_json_atomic

FORMAT_VERSION = 1
ARRAYS_FILE = "demos.safetensors"
META_FILE = "demos.json"
STEP_ARRAYS = {"action": np.float32, "reward": np.float32, "episode_index": np.int64, "step": np.int64,
               "success": np.bool_}


@dataclasses.dataclass
class Demos:
    """A loaded (or freshly collected) demonstration set."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.arrays["action"].shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.meta["counts"]["episodes"])

    def episode(self, k: int) -> dict[str, np.ndarray]:
        rows = self.arrays["episode_index"] == k
        return {name: values[rows] for name, values in self.arrays.items()}


def recorder(rows: dict[str, list]):
    """An ``on_step`` callback appending each transition's observation and step arrays to ``rows``."""

    def record(t) -> None:
        for key in ("state", "image"):
            if key in t.obs:
                rows[key].append(t.obs[key])
        values = (t.action, t.reward, t.episode, t.step, bool(t.info.get("success", False)))
        for name, value in zip(STEP_ARRAYS, values):
            rows[name].append(value)

    return record


def collect_demos(task_id: str, n_episodes: int, *, seed: int = 0, obs_mode: str = "state",
                  image_size: int = 128, camera_size: int | None = None, only_success: bool = True,
                  max_attempts: int | None = None, log: Any = None) -> Demos:
    """Roll the task's expert out until ``n_episodes`` are kept (only successful ones by default).

    Attempt k starts from seed ``seed + k``; at most ``max_attempts`` (default ``3 * n_episodes``) are made.
    An episode counts as a success only if the task reported success at one of its steps; failed episodes
    are kept (with ``only_success=False``) as they were, their ``success`` rows false.
    """
    from vla_cl.envs.experts import ExpertPolicy, make_expert
    from vla_cl.envs.registry import make
    from vla_cl.envs.vector import rollout

    make_expert(task_id)  # fail early, naming the tasks with experts
    max_attempts = max_attempts or 3 * n_episodes
    env = make(task_id, obs_mode=obs_mode, image_size=image_size, camera_size=camera_size)
    policy = ExpertPolicy(task_id, env)
    rows: dict[str, list] = {name: [] for name in ("state", "image", *STEP_ARRAYS)}
    kept_seeds, kept_lengths, instructions = [], [], []
    attempts = successes = 0
    try:
        while len(kept_seeds) < n_episodes and attempts < max_attempts:
            episode_rows: dict[str, list] = {name: [] for name in rows}
            (episode,) = rollout(policy, env, 1, seed=seed + attempts, on_step=recorder(episode_rows))
            attempt = attempts
            attempts += 1
            successes += episode.success
            if episode.success or not only_success:
                episode_rows["episode_index"] = [len(kept_seeds)] * episode.length
                for name, values in episode_rows.items():
                    rows[name].extend(values)
                kept_seeds.append(episode.seed)
                kept_lengths.append(episode.length)
                instructions.append(episode.instruction)
            if log is not None:  # one line per attempt (each rollout's own index is always 0)
                log(episode=attempt, seed=episode.seed, success=episode.success, length=episode.length,
                    kept=len(kept_seeds))
        state_dim = env.observation_space["state"].shape[0] if "state" in env.observation_space.spaces else 0
        action_stats = env.action_stats
        options = dataclasses.asdict(env.options)
    finally:
        env.close()
    if not kept_seeds:
        raise ValueError(f"the expert for {task_id} succeeded in none of {attempts} attempts; no demos to write")
    arrays = {name: np.asarray(values, dtype=STEP_ARRAYS[name]) for name, values in rows.items()
              if name in STEP_ARRAYS}
    if rows["state"]:
        arrays["state"] = np.stack(rows["state"]).astype(np.float32)
    if rows["image"]:
        arrays["image"] = np.stack(rows["image"]).astype(np.uint8)
    meta = {
        "format_version": FORMAT_VERSION,
        "task_id": task_id,
        "instruction": instructions[0],
        "instructions": instructions,
        "obs_mode": obs_mode,
        "state_dim": int(state_dim),
        "image_size": image_size if obs_mode != "state" else None,
        "action_stats": action_stats,
        "action_quantiles": {
            "q01": np.quantile(arrays["action"], 0.01, axis=0).tolist(),
            "q99": np.quantile(arrays["action"], 0.99, axis=0).tolist(),
        },
        "env_options": options,
        "episode_seeds": kept_seeds,
        "episode_lengths": kept_lengths,
        "counts": {"episodes": len(kept_seeds), "steps": int(arrays["action"].shape[0]), "attempts": attempts},
        "success_rate": successes / attempts,
        "only_success": only_success,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Demos(arrays, meta)


def merge_demos(sets: list[Demos]) -> Demos:
    """Several demonstration sets (of different tasks) as one: episodes renumbered in order, each keeping
    its own instruction, so that one instruction-conditioned policy learns them all. The sets must share
    observation mode, state size and action statistics (tokens must mean the same actions)."""
    if not sets:
        raise ValueError("merge_demos needs at least one demonstration set")
    first = sets[0].meta
    for demos in sets[1:]:
        for key in ("obs_mode", "state_dim", "image_size", "action_stats"):
            if demos.meta.get(key) != first.get(key):
                raise ValueError(f"cannot merge demonstrations of {first['task_id']} and {demos.meta['task_id']}: "
                                 f"their {key} differ ({first.get(key)!r} vs {demos.meta.get(key)!r})")
    offsets = np.cumsum([0] + [d.num_episodes for d in sets[:-1]])
    arrays = {name: np.concatenate([d.arrays[name] for d in sets]) for name in sets[0].arrays}
    arrays["episode_index"] = np.concatenate([d.arrays["episode_index"] + off for d, off in zip(sets, offsets)])
    counts = {key: sum(d.meta["counts"][key] for d in sets) for key in ("episodes", "steps", "attempts")}
    meta = {
        **{key: first[key] for key in ("format_version", "obs_mode", "state_dim", "image_size", "action_stats")},
        "task_id": "+".join(d.meta["task_id"] for d in sets),
        "task_ids": [d.meta["task_id"] for d in sets],
        "instruction": first["instruction"],
        "instructions": [text for d in sets for text in d.meta["instructions"]],
        "episode_seeds": [seed for d in sets for seed in d.meta.get("episode_seeds", [])],
        "episode_lengths": [n for d in sets for n in d.meta.get("episode_lengths", [])],
        "counts": counts,
        "success_rate": sum(d.meta["success_rate"] * d.meta["counts"]["attempts"] for d in sets) / counts["attempts"],
        "only_success": all(d.meta.get("only_success", True) for d in sets),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    merged = Demos(arrays, meta)
    validate(merged.arrays, merged.meta, "merged demonstrations")
    return merged


def save_demos(demos: Demos, folder: str | Path) -> Path:
    """Write the set atomically: the old ``demos.json`` goes first and the new one is written last, so that
    at every moment the folder holds a complete set (both files, matching) or no ``demos.json``."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    with atomic_path(folder / ARRAYS_FILE) as tmp:
        save_file({name: np.ascontiguousarray(values) for name, values in demos.arrays.items()}, str(tmp))
    write_json_atomic(folder / META_FILE, demos.meta)
    return folder


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished set (see :func:`save_demos` for why ``demos.json`` says so)."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() and (folder / ARRAYS_FILE).is_file()


def _demos_folder(path: Path) -> Path:
    """The folder holding the files: ``path`` itself or the ``artifacts/`` of a ``vla-cl demos`` run."""
    for candidate in (path, path / "artifacts"):
        if (candidate / META_FILE).exists() or (candidate / ARRAYS_FILE).exists():
            return candidate
    return path


def load_demos(path: str | Path) -> Demos:
    """Read and validate a demonstration folder (see the module docstring for the format)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    given = Path(path)
    if not given.exists():
        raise ValueError(f"demos path {given} does not exist; create one with `vla-cl demos task=... n=... out_dir=...`")
    folder = _demos_folder(given)
    missing = [name for name in (META_FILE, ARRAYS_FILE) if not (folder / name).exists()]
    if missing:
        raise ValueError(f"{folder} is not a demos folder: missing {', '.join(missing)} "
                         f"(expected {META_FILE} and {ARRAYS_FILE}, as `vla-cl demos` writes them)")
    again = "record it again with `vla-cl demos` (a new out_dir, or delete the folder)"
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / META_FILE} is not valid JSON ({error}); {again}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / META_FILE}: format_version {meta.get('format_version')!r}, "
                         f"this reader understands {FORMAT_VERSION}")
    try:
        arrays = load_file(str(folder / ARRAYS_FILE))
    except SafetensorError as error:  # a truncated or overwritten file: the header no longer matches the data
        raise ValueError(f"{folder / ARRAYS_FILE} is damaged (truncated?): {error}; {again}") from None
    validate(arrays, meta, folder)
    return Demos(arrays, meta)


def validate(arrays: dict[str, np.ndarray], meta: dict[str, Any], where: Any = "demos") -> None:
    """Raise ValueError naming the first problem: missing arrays, wrong shapes/dtypes, an empty set."""
    absent = [name for name in STEP_ARRAYS if name not in arrays]
    if absent:
        raise ValueError(f"{where}: arrays {absent} are missing (have {sorted(arrays)})")
    n = arrays["action"].shape[0]
    if n == 0:
        raise ValueError(f"{where}: the demonstration set is empty (0 steps)")
    if arrays["action"].shape != (n, 7):
        raise ValueError(f"{where}: action must have shape (N, 7), got {arrays['action'].shape}")
    if not np.isfinite(arrays["action"]).all():
        raise ValueError(f"{where}: action contains NaN or inf")
    for name, values in arrays.items():
        if values.shape[0] != n:
            raise ValueError(f"{where}: {name} has {values.shape[0]} rows, action has {n}")
        if name in STEP_ARRAYS and values.dtype != STEP_ARRAYS[name]:
            raise ValueError(f"{where}: {name} must be {np.dtype(STEP_ARRAYS[name])}, got {values.dtype}")
    if "state" not in arrays and "image" not in arrays:
        raise ValueError(f"{where}: neither state nor image observations are stored")
    if "state" in arrays and arrays["state"].shape[1:] != (meta["state_dim"],):
        raise ValueError(f"{where}: state has shape {arrays['state'].shape}, meta says state_dim {meta['state_dim']}")
    if "image" in arrays and (arrays["image"].ndim != 4 or arrays["image"].shape[-1] != 3
                              or arrays["image"].dtype != np.uint8):
        raise ValueError(f"{where}: image must be (N, H, W, 3) uint8, got {arrays['image'].dtype} {arrays['image'].shape}")
    episodes = arrays["episode_index"]
    if episodes[0] != 0 or np.any(np.diff(episodes) < 0) or np.any(np.diff(episodes) > 1):
        raise ValueError(f"{where}: episode_index must run 0, 0, ..., 1, 1, ... without gaps")
    if int(episodes[-1]) + 1 != meta["counts"]["episodes"]:
        raise ValueError(f"{where}: {int(episodes[-1]) + 1} episodes stored, meta counts {meta['counts']['episodes']}")


# ---------------------------------------------------------------------- vla-cl demos
@dataclasses.dataclass
class DemosConfig(RunConfig):
    task: str = option("maniskill/PickCube-v1", "task id with a scripted expert (see vla_cl.envs.experts)")
    n: int = option(20, "episodes to keep")
    only_success: bool = option(True, "keep only the expert's successful episodes")
    obs_mode: str = option("state", "observations stored: state, rgb or both")
    image_size: int = option(128, "side of stored images in pixels (rgb/both): the policy's input size")
    camera_size: int | None = option(None, "width the task's camera renders at before images are resized to "
                                     "image_size (None: the task's own, 640 on the SimplerEnv scenes; e.g. 160 "
                                     "makes CPU collection ~3x faster, but such images are not SimplerEnv's "
                                     "protocol)")
    max_attempts: int | None = option(None, "episodes to try at most (default 3 * n)")

    def __post_init__(self) -> None:
        require(self.n >= 1, "n", self.n, "an integer >= 1")
        require_choice("obs_mode", self.obs_mode, OBS_MODES)
        require(16 <= self.image_size <= 1024, "image_size", self.image_size, "16..1024")
        if self.camera_size is not None:
            require(16 <= self.camera_size <= 1920, "camera_size", self.camera_size, "16..1920 or None")
        if self.max_attempts is not None:
            require(self.max_attempts >= self.n, "max_attempts", self.max_attempts, f"None or >= n ({self.n})")
        from vla_cl.envs.experts import make_expert

        get_spec(self.task)  # an unknown id lists the valid ones
        make_expert(self.task)  # names the tasks that have experts


def drop_collection_metrics(metrics_path: Path) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) without the lines of an unfinished collection: its attempt
    lines (those with an ``episode`` field) and any half-written line; returns how many were dropped.

    The attempt lines are logged as the collection goes, so that a long one can be watched; only a saved
    set makes them final, which is why a folder without one has them dropped before starting over.
    """
    return filter_jsonl(metrics_path, lambda record: not (isinstance(record, dict) and "episode" in record))


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of a killed write (``vla_cl.files.atomic_path`` names them ``.<name>.<pid>.tmp``)."""
    for name in (ARRAYS_FILE, META_FILE):
        for stale in folder.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def run(config: DemosConfig, run_dir) -> int:
    folder = run_dir.artifacts
    if is_complete(folder):
        meta = json.loads((folder / META_FILE).read_text())
        counts = meta["counts"]
        print(f"[demos] reused the complete set in {folder} ({counts['episodes']} episodes, {counts['steps']} "
              f"steps of {counts['attempts']} attempts); nothing simulated. Delete it to record again.")
        if not (run_dir.path / "summary.json").exists():  # killed between saving the set and its summary
            write_json_atomic(run_dir.path / "summary.json", summary_of(config, meta, folder, seconds=None))
        return 0 if counts["episodes"] == config.n else 1
    dropped = drop_collection_metrics(run_dir.metrics_path)
    if dropped:
        print(f"[demos] {folder} holds no complete set: dropped {dropped} metrics lines of an interrupted "
              "collection and started over")
    remove_stale_temporaries(folder)
    start = time.perf_counter()
    demos = collect_demos(config.task, config.n, seed=config.seed, obs_mode=config.obs_mode,
                          image_size=config.image_size, camera_size=config.camera_size,
                          only_success=config.only_success, max_attempts=config.max_attempts, log=run_dir.log)
    save_demos(demos, folder)
    elapsed = time.perf_counter() - start
    seconds = round(elapsed, 2)
    summary = summary_of(config, demos.meta, folder, seconds=seconds)
    write_json_atomic(run_dir.path / "summary.json", summary)
    low, high = summary["success_ci95"]
    counts = demos.meta["counts"]
    print(f"[demos] {config.task}: kept {counts['episodes']} episodes ({counts['steps']} steps) of "
          f"{counts['attempts']} attempts, expert success {demos.meta['success_rate']:.0%} (95 % interval "
          f"{low:.0%}-{high:.0%}); {counts['steps'] / max(elapsed, 1e-6):.1f} steps/s recorded; in {folder}")
    return 0 if counts["episodes"] == config.n else 1


def summary_of(config: DemosConfig, meta: dict[str, Any], folder: Path, seconds: float | None) -> dict[str, Any]:
    from vla_cl.stats import wilson_interval

    counts = meta["counts"]
    successes = round(meta["success_rate"] * counts["attempts"])
    return {"task": config.task, **counts, "success_rate": meta["success_rate"],
            "success_ci95": list(wilson_interval(successes, counts["attempts"])), "seconds": seconds,
            "steps_per_second": None if not seconds else round(counts["steps"] / seconds, 2), "folder": str(folder)}
