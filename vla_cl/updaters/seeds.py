"""Derived seeds: one independent stream of randomness per kind of draw, so that none shifts another.

Every draw of a training run (episode reset seeds, action sampling, minibatch order, demonstration batches,
dropout) comes from ``derived_seed(seed, STREAM, iteration)``, which is what makes an iteration a pure
function of the state before it (exact resume, see ``vla_cl.updaters.loop``).
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN, EVAL, PROBE, SAMPLE, EVAL_SAMPLE, PROBE_SAMPLE, MINIBATCH, DEMOS, REFRESH, DROPOUT = range(1, 11)


def derived_seed(seed: int, stream: int, index: int = 0) -> int:
    """A seed for ``stream`` (TRAIN, EVAL, ...) at ``index`` (the iteration), independent of the others;
    < 2**30, so that episode k of a collection can use ``derived_seed(...) + k``."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0] % 2**30)


def generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, stream, index))
