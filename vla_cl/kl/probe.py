"""``KLProbe``: the forgetting predictor E_{x in probe set}[KL(pi0(.|x) || pi(.|x))] of a policy.

A probe holds a fixed set of new-task inputs and measures, batch by batch, the action-token KL between
the base policy pi0 and the current policy pi. pi0 never needs its own copy of the weights:

* ``cache_reference(logits_fn)`` runs pi0 once (before fine-tuning, or a frozen copy that is then freed)
  and keeps only its distribution over the action support: N x D x 256 floats (7 MB for 1000 inputs in
  float32; ``cache_dtype=torch.bfloat16`` halves it, at ~3 significant digits of pi0's log-probs);
* ``measure(logits_fn, reference=model.disable_adapter)`` gets pi0 from the same object with its LoRA
  adapter switched off, one extra forward pass per batch and no memory.

``logits_fn(batch)`` returns the action-token logits (B, D, V) of the policy teacher-forced on the
batch's action tokens; for an autoregressive policy those tokens should be drawn from pi0 so the
chain-rule sum is unbiased (see ``sequence``). With a ``vla_cl.policies.Policy``::

    probe = KLProbe({"obs": obs, "tokens": tokens}, support=policy.action_support)
    logits_fn = lambda batch: policy.action_logits(batch["obs"], batch["tokens"])
    probe.measure(logits_fn, reference=policy.reference)

Both routes compute the KL through the same code from pi0's float32 log-probs, so a cached float32
reference and a disabled adapter give identical numbers. With the cache, a measurement costs pi's
forward pass plus one log-softmax and one dot product over (B, D, 256): KL = sum p0 log p0 - sum p0 log pi,
with the first term cached (``divergences.reference_terms``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

from vla_cl.kl.divergences import (
    ReferenceTerms,
    Support,
    check_logits,
    kl_from_reference_terms,
    raise_if_nonfinite,
    reference_terms,
    support_log_softmax,
)
from vla_cl.kl.sequence import KLEstimate

LogitsFn = Callable[[Any], torch.Tensor]
ReferenceFactory = Callable[[], AbstractContextManager]
# A tensor, a sequence, a batch object with select(rows), or a mapping of those, all of one length.
ProbeInputs = Any


def _length(inputs: ProbeInputs) -> int:
    if isinstance(inputs, Mapping):
        lengths = {name: _length(value) for name, value in inputs.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"inputs must map names to equally long tensors, got lengths {lengths}")
        return next(iter(lengths.values()))
    try:
        return len(inputs)
    except TypeError:
        raise ValueError(
            f"inputs must be a tensor, a mapping, a sequence or a batch object, got {type(inputs).__name__}"
        ) from None


def _take(inputs: ProbeInputs, rows: slice) -> Any:
    """Rows of the probe set: tensors and sequences are sliced, mappings per key, and batch objects
    without slicing (e.g. ``policies.ObsBatch``) through their ``select(rows)``."""
    if isinstance(inputs, Mapping):
        return {name: _take(value, rows) for name, value in inputs.items()}
    if not isinstance(inputs, torch.Tensor) and hasattr(inputs, "select"):
        return inputs.select(rows)
    return inputs[rows]


class KLProbe:
    """Mean forward KL(pi0 || pi) over a fixed probe set, with pi0 from a cache or a reference context."""

    def __init__(
        self,
        inputs: ProbeInputs,
        batch_size: int = 64,
        support: Support = "action",
        cache_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if cache_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"cache_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {cache_dtype!r}"
            )
        self.n = _length(inputs)
        if self.n == 0:
            raise ValueError("inputs must hold at least one probe input, got none")
        self.inputs = inputs
        self.batch_size = batch_size
        self.support = support
        self.cache_dtype = cache_dtype
        self._cache: list[ReferenceTerms | torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def batches(self) -> Iterator[Any]:
        """The probe set in order, ``batch_size`` inputs at a time."""
        for start in range(0, self.n, self.batch_size):
            yield _take(self.inputs, slice(start, start + self.batch_size))

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def _support_log_probs(self, logits: torch.Tensor, name: str) -> torch.Tensor:
        """(B, ..., V) logits -> (B, P, S) float32 log-probs over the support. pi and pi0 both pass through
        here, so identical logits give bit-identical log-probs and a KL of exactly 0."""
        check_logits(name, logits)
        flat = logits.reshape(logits.shape[0], -1, logits.shape[-1])
        return support_log_softmax(flat, self.support, dtype=torch.float32)

    def _reference_entry(self, base_logits: torch.Tensor, compress: bool) -> ReferenceTerms | torch.Tensor:
        """What pi0 contributes to later KLs: its probabilities and negative entropy in float32 (so a
        measurement costs pi's log-softmax and one dot product), or, to ``compress`` a cache kept in a
        16-bit ``cache_dtype``, its log-probs in that dtype."""
        base_log_probs = self._support_log_probs(base_logits, "reference logits")
        if not bool(torch.isfinite(base_log_probs.sum(-1)).all()):  # a sum is much cheaper than isfinite()
            raise_if_nonfinite("reference logits", base_logits)
        if compress and self.cache_dtype != torch.float32:
            return base_log_probs.to(self.cache_dtype)
        return reference_terms(base_log_probs)

    def cache_reference(self, logits_fn: LogitsFn) -> None:
        """Run pi0 (``logits_fn``) over the probe set once and keep what the KL needs from it."""
        with torch.no_grad():
            self._cache = [self._reference_entry(logits_fn(batch), compress=True) for batch in self.batches()]

    def clear_cache(self) -> None:
        self._cache = None

    def _batch_kl(self, entry: ReferenceTerms | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-input KL(pi0 || pi) from a reference entry and pi's raw logits (B, ..., V)."""
        if isinstance(entry, torch.Tensor):  # compressed log-probs: renormalise after rounding
            entry = reference_terms(support_log_softmax(entry, dtype=torch.float32))
        probs, neg_entropy = entry
        log_q = self._support_log_probs(logits, "logits")
        if probs.shape != log_q.shape:
            raise ValueError(
                f"logits_fn returned shape {tuple(logits.shape)}, which does not match the reference's "
                f"{tuple(probs.shape)} (did the probe set or the policy's output change?)"
            )
        kl = kl_from_reference_terms(probs.to(log_q.device), neg_entropy.to(log_q.device), log_q).sum(-1)
        if not bool(torch.isfinite(kl).all()):  # NaN/inf logits always surface here
            raise_if_nonfinite("logits", logits)
        return kl

    def measure(self, logits_fn: LogitsFn, reference: ReferenceFactory | None = None) -> KLEstimate:
        """E_x[KL(pi0 || pi)] over the probe set. ``reference=None`` uses the cache; otherwise
        ``reference()`` must return a context manager inside which ``logits_fn`` acts as pi0
        (e.g. ``reference=model.disable_adapter``)."""
        if reference is None and self._cache is None:
            raise ValueError("reference is None and no reference is cached: call cache_reference() first")
        if reference is not None and (hasattr(reference, "__enter__") or not callable(reference)):
            raise ValueError(
                f"reference must be a callable returning a context manager (e.g. model.disable_adapter, "
                f"without parentheses), got {type(reference).__name__}"
            )
        per_input = []
        with torch.no_grad():
            for index, batch in enumerate(self.batches()):
                if reference is None:
                    base = self._cache[index]
                else:
                    with reference():
                        base = self._reference_entry(logits_fn(batch), compress=False)
                per_input.append(self._batch_kl(base, logits_fn(batch)))
        return KLEstimate.from_samples(torch.cat(per_input))
