"""OpenVLA's action tokenizer, reproduced exactly, plus q01/q99 action normalisation.

OpenVLA turns each normalised action dimension in [-1, 1] into one token: 256 uniformly spaced bin
*edges* ``linspace(-1, 1, 256)``, ``np.digitize`` against them (which returns 1..256 after clipping), and
token id ``vocab_size - digitized``, so with the Llama-2 vocabulary (32000) the action tokens are ids
31744..31999 and an action of -1.0 is id 31999. Decoding maps an id back to one of the 255 bin
*centres*: ``clip(vocab_size - id - 1, 0, 254)``, so ids 31744 and 31745 decode to the same value.
A policy with its own small vocabulary (no LLM) uses the same class with ``vocab_size=n_bins``; its ids
are then 0..n_bins-1.

Actions reach the tokenizer normalised: ``NormStats`` maps raw actions to [-1, 1] with the dataset's
1st/99th percentiles (OpenVLA's ``BOUNDS_Q99``) on the dimensions its mask selects; the gripper is
usually unmasked and passes through unchanged. Checkpoints store these statistics under
``norm_stats[<dataset>]["action"]``; ``NormStats.from_checkpoint`` takes that dict as it is.

Only numpy is imported here so that ``import vla_cl`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

# OpenVLA divides by (q99 - q01 + 1e-8) when normalising, so a dimension with q99 == q01 maps to -1
# instead of dividing by zero; we keep the same epsilon so tokens match OpenVLA's training data.
_NORM_EPS = 1e-8


def _as_float_array(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {float(array[index])} at index {index}")
    return array


# eq=False: the fields are arrays, whose == is elementwise and would make dataclass equality ambiguous.
@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    """Per-dimension action statistics for OpenVLA's q01/q99 normalisation."""

    q01: np.ndarray  # 1st percentile of each action dimension in the dataset
    q99: np.ndarray  # 99th percentile of each action dimension
    mask: np.ndarray | None = None  # True where a dimension is normalised; None means all of them

    def __post_init__(self) -> None:
        q01 = _as_float_array("q01", self.q01)
        q99 = _as_float_array("q99", self.q99)
        if q01.ndim != 1 or q01.shape != q99.shape:
            raise ValueError(
                f"q01 and q99 must be 1-D of equal length, got shapes {q01.shape} and {q99.shape}"
            )
        mask = np.ones(q01.shape, dtype=bool) if self.mask is None else np.asarray(self.mask)
        if mask.shape != q01.shape or mask.dtype != bool:
            raise ValueError(f"mask must be a bool array of shape {q01.shape}, got {mask.dtype} {mask.shape}")
        below = mask & (q99 < q01)
        if below.any():
            d = int(np.argmax(below))
            raise ValueError(
                f"q99 must be >= q01 on masked dims, got q99[{d}]={float(q99[d])} < q01[{d}]={float(q01[d])}"
            )
        object.__setattr__(self, "q01", q01)
        object.__setattr__(self, "q99", q99)
        object.__setattr__(self, "mask", mask)

    @property
    def action_dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_checkpoint(cls, norm_stats: Mapping[str, Any], dataset: str | None = None) -> NormStats:
        """Build from a checkpoint's statistics: the whole ``norm_stats`` (pick ``dataset``), one dataset's
        entry (with an ``"action"`` key) or the action statistics themselves (keys q01, q99, mask)."""
        stats: Mapping[str, Any] = norm_stats
        if dataset is not None:
            if dataset not in stats:
                raise ValueError(f"dataset {dataset!r} not in norm_stats (have: {sorted(stats)})")
            stats = stats[dataset]
        elif "q01" not in stats and "action" not in stats:
            if len(stats) != 1:
                raise ValueError(f"dataset must name one of {sorted(stats)} when norm_stats holds several")
            stats = next(iter(stats.values()))
        if "action" in stats:
            stats = stats["action"]
        missing = [key for key in ("q01", "q99") if key not in stats]
        if missing:
            raise ValueError(f"norm_stats is missing {missing} (has: {sorted(stats)})")
        mask = stats.get("mask")
        return cls(
            q01=stats["q01"], q99=stats["q99"], mask=None if mask is None else np.asarray(mask, dtype=bool)
        )

    def _check_dims(self, name: str, actions: np.ndarray) -> None:
        if actions.ndim == 0 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"{name} must have last dimension {self.action_dim}, got shape {actions.shape}")

    def normalize(self, actions: Any) -> np.ndarray:
        """Raw actions -> [-1, 1] on masked dims (clipped, as OpenVLA's data pipeline does)."""
        actions = _as_float_array("actions", actions)
        self._check_dims("actions", actions)
        scaled = 2.0 * (actions - self.q01) / (self.q99 - self.q01 + _NORM_EPS) - 1.0
        return np.where(self.mask, np.clip(scaled, -1.0, 1.0), actions)

    def unnormalize(self, actions: Any, check: bool = True) -> np.ndarray:
        """[-1, 1] -> raw actions on masked dims: ``0.5 (a + 1)(q99 - q01) + q01``, as OpenVLA's
        predict_action does. ``check=False`` skips validating input that ``decode`` just produced."""
        if check:
            actions = _as_float_array("actions", actions)
            self._check_dims("actions", actions)
        return np.where(self.mask, 0.5 * (actions + 1.0) * (self.q99 - self.q01) + self.q01, actions)


@dataclasses.dataclass(frozen=True)
class ActionTokenizer:
    """Normalised continuous actions <-> discrete action tokens, bit-for-bit as OpenVLA does it."""

    vocab_size: int = 32000  # size of the base vocabulary whose last n_bins ids are the action tokens
    n_bins: int = 256  # number of bin edges (OpenVLA: 256 edges -> 256 token ids, 255 distinct centres)
    stats: NormStats | None = None  # statistics for normalize/unnormalize; None if actions come normalised

    def __post_init__(self) -> None:
        if not isinstance(self.n_bins, (int, np.integer)) or self.n_bins < 2:
            raise ValueError(f"n_bins must be an int >= 2, got {self.n_bins!r}")
        if not isinstance(self.vocab_size, (int, np.integer)) or self.vocab_size < self.n_bins:
            raise ValueError(f"vocab_size must be an int >= n_bins ({self.n_bins}), got {self.vocab_size!r}")
        if self.stats is not None and not isinstance(self.stats, NormStats):
            raise ValueError(f"stats must be a NormStats or None, got {type(self.stats).__name__}")

    @classmethod
    def from_norm_stats(
        cls, norm_stats: Mapping[str, Any], dataset: str | None = None, **kwargs: Any
    ) -> ActionTokenizer:
        """A tokenizer carrying a checkpoint's action statistics (see ``NormStats.from_checkpoint``)."""
        return cls(stats=NormStats.from_checkpoint(norm_stats, dataset), **kwargs)

    @functools.cached_property
    def bins(self) -> np.ndarray:
        """The n_bins bin edges in [-1, 1] (computed once, read-only)."""
        edges = np.linspace(-1.0, 1.0, self.n_bins)
        edges.flags.writeable = False
        return edges

    @functools.cached_property
    def bin_centers(self) -> np.ndarray:
        """The n_bins - 1 values that ids decode to (computed once, read-only)."""
        edges = self.bins
        centres = (edges[:-1] + edges[1:]) / 2.0
        centres.flags.writeable = False
        return centres

    @property
    def bin_ids(self) -> range:
        """The vocabulary ids of the action tokens (OpenVLA: 31744..31999)."""
        return range(self.vocab_size - self.n_bins, self.vocab_size)

    def encode(self, actions: Any, strict: bool = False) -> np.ndarray:
        """Normalised actions (..., D) -> token ids (..., D) as int64. Out-of-range values are clipped to
        [-1, 1] as OpenVLA does, unless ``strict``, where they raise ValueError."""
        actions = _as_float_array("actions", actions)
        if strict:
            outside = np.abs(actions) > 1.0
            if outside.any():
                index = tuple(int(i) for i in np.argwhere(outside)[0])
                raise ValueError(
                    f"actions must lie in [-1, 1] in strict mode, got {float(actions[index])} at {index}"
                )
        digitized = np.digitize(np.clip(actions, -1.0, 1.0), self.bins)
        return (self.vocab_size - digitized).astype(np.int64)

    def decode(self, ids: Any, check: bool = True) -> np.ndarray:
        """Token ids (..., D) -> normalised actions (..., D) at the bin centres. ``check=False`` skips the
        validation of ids a decoder just chose from the action slice."""
        ids = np.asarray(ids)
        start, stop = self.vocab_size - self.n_bins, self.vocab_size
        if check and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array, got dtype {ids.dtype}")
        if check and ids.size and (ids.min() < start or ids.max() >= stop):
            outside = (ids < start) | (ids >= stop)
            index = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(
                f"ids must lie in the action slice [{start}, {stop}), "
                f"got {int(ids[index])} at {index}"
            )
        # digitize returned 1..n_bins but there are only n_bins - 1 centres: the top index folds down.
        index = np.clip(self.vocab_size - ids.astype(np.int64) - 1, 0, self.n_bins - 2)
        return self.bin_centers[index]

    def _require_stats(self) -> NormStats:
        if self.stats is None:
            raise ValueError(
                "stats is None: build the tokenizer with stats=NormStats(...) or from_norm_stats()"
            )
        return self.stats

    def normalize(self, actions: Any) -> np.ndarray:
        """Raw actions -> normalised actions with this tokenizer's statistics."""
        return self._require_stats().normalize(actions)

    def unnormalize(self, actions: Any, check: bool = True) -> np.ndarray:
        """Normalised actions -> raw actions with this tokenizer's statistics."""
        return self._require_stats().unnormalize(actions, check)
