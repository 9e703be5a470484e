"""Divergences between two categorical distributions given by logits, computed exactly and stably.

Every function here takes logits of any leading shape, reduces over the last (vocabulary) dimension and
returns the leading shape. Inputs may be float16/bfloat16/float32 (computed in float32) or float64
(computed in float64, which the tests use as a reference). Work proceeds in chunks of rows so that 100k x
7 x 256 logits never materialise four full-size temporaries and each chunk stays in cache.

Which columns form the distribution is the ``support``: ``None``/``"full"`` normalises over every
column, a ``slice``/``range`` (e.g. ``ActionTokenizer.bin_ids``) over those columns only, and ``"action"``
over the action tokens (see ``resolve_support``). The action slice is the default for action tokens
because it is the distribution over actions the policy actually executes (decoding never picks a
non-action token: it is argmax/sampling restricted to the 256 ids) and it matches the RL codebases
(RL4VLA, RLinf, SimpleVLA-RL). VLA-RL normalises over the full vocabulary instead; pass
``support="full"`` to reproduce it. The two give different numbers whenever a policy puts mass outside
the action slice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# OpenVLA's action tokens: the last 256 ids of Llama-2's 32000-token vocabulary. Its logits are 32000
# wide, or 32064 with the padding the checkpoint adds for efficient matmuls.
OPENVLA_ACTION_SLICE = slice(31744, 32000)
_OPENVLA_VOCAB_WIDTHS = (32000, 32064)
# Wider than this and not OpenVLA's width, "action" refuses to guess: it is some other LLM's vocabulary.
_MAX_OWN_VOCAB = 4096

Support = None | str | slice | range
# pi0's probabilities (..., S) and negative entropy sum p log p (...): all a KL(pi0 || .) needs from pi0.
ReferenceTerms = tuple[torch.Tensor, torch.Tensor]

# Elements per chunk on the CPU (256 rows of 256 floats, 256 KiB: stays in L2). Chunks of 64k-256k
# elements ran 2-4x faster than one unchunked pass on 100k x 7 x 256 logits on one core. Accelerators
# want few large kernels instead, so there a chunk only bounds the temporaries (64M elements, 256 MiB).
_CHUNK_ELEMENTS = {"cpu": 1 << 16}
_DEVICE_CHUNK_ELEMENTS = 1 << 26


def resolve_support(support: Support, n_columns: int) -> slice:
    """The slice of logit columns a distribution is normalised over.

    ``None`` or ``"full"``: all columns. ``slice``/``range``: those columns (step 1). ``"action"``: for
    OpenVLA-width logits (32000 or 32064 columns) ids 31744..31999; for a narrow vocabulary (up to 4096
    columns: a policy with its own action vocabulary, or logits already sliced) all columns; any other
    width raises, because the action ids of an unknown LLM vocabulary cannot be guessed.
    """
    if support is None or support == "full":
        return slice(0, n_columns)
    if support == "action":
        if n_columns in _OPENVLA_VOCAB_WIDTHS:
            return OPENVLA_ACTION_SLICE
        if n_columns <= _MAX_OWN_VOCAB:
            return slice(0, n_columns)
        raise ValueError(
            f"support='action' cannot tell where the action tokens are among {n_columns} columns; "
            "pass support=tokenizer.bin_ids or a slice"
        )
    if isinstance(support, (slice, range)):
        start = 0 if support.start is None else support.start
        stop = n_columns if support.stop is None else support.stop
        if support.step not in (None, 1) or not 0 <= start < stop <= n_columns:
            raise ValueError(f"support must be a step-1 range inside [0, {n_columns}), got {support!r}")
        return slice(start, stop)
    raise ValueError(f"support must be None, 'full', 'action', a slice or a range, got {support!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (references); every other float is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def support_log_softmax(
    logits: torch.Tensor, support: Support = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """log-softmax over the support's columns, shape (..., n_support), computed in ``compute_dtype`` of the
    logits (or in ``dtype``). The one place this formula is written; it does not validate (``log_probs``
    does), so callers that must accept -inf logits (masked columns) or check their own output use it."""
    columns = resolve_support(support, logits.shape[-1])
    dtype = compute_dtype(logits.dtype) if dtype is None else dtype
    return torch.log_softmax(logits[..., columns].to(dtype), dim=-1)


def check_logits(name: str, logits: torch.Tensor) -> None:
    """Reject what cannot be logits: non-tensors, non-float dtypes, empty vocabularies."""
    if not isinstance(logits, torch.Tensor):
        # ValueError, not TypeError: every bad input to this API raises the same error type.
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")  # noqa: TRY004
    if not logits.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {logits.dtype}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"{name} must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}"
        )


def check_pair(p_name: str, p: torch.Tensor, q_name: str, q: torch.Tensor) -> None:
    check_logits(p_name, p)
    check_logits(q_name, q)
    if p.shape != q.shape:
        raise ValueError(
            f"{p_name} and {q_name} must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    if p.dtype != q.dtype:
        raise ValueError(
            f"{p_name} and {q_name} must have the same dtype, got {p.dtype} and {q.dtype} (cast one)"
        )


def raise_if_nonfinite(name: str, logits: torch.Tensor) -> None:
    """Raise ValueError naming the first NaN/inf entry of ``logits``, if there is one."""
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be finite, got {logits[index].item()} at index {index}")


def _rows(logits: torch.Tensor, columns: slice) -> torch.Tensor:
    return logits[..., columns].reshape(-1, columns.stop - columns.start)


def rowwise(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    p_name: str,
    p: torch.Tensor,
    q_name: str,
    q: torch.Tensor,
    support: Support,
) -> torch.Tensor:
    """Apply ``fn(p_log_probs, q_log_probs) -> (rows,)`` chunk by chunk over the support, in the compute
    dtype. Non-finite inputs are found through the output (every divergence here turns NaN/inf logits into
    a non-finite value), so finite inputs pay nothing for the check."""
    check_pair(p_name, p, q_name, q)
    columns = resolve_support(support, p.shape[-1])
    p_rows, q_rows = _rows(p, columns), _rows(q, columns)
    dtype = compute_dtype(p.dtype)
    out = torch.empty(p_rows.shape[0], dtype=dtype, device=p.device)
    step = max(1, _CHUNK_ELEMENTS.get(p.device.type, _DEVICE_CHUNK_ELEMENTS) // p_rows.shape[1])
    for start in range(0, p_rows.shape[0], step):
        stop = start + step
        p_log = support_log_softmax(p_rows[start:stop], dtype=dtype)
        q_log = support_log_softmax(q_rows[start:stop], dtype=dtype)
        out[start:stop] = fn(p_log, q_log)
    if not bool(torch.isfinite(out).all()):
        raise_if_nonfinite(p_name, p)
        raise_if_nonfinite(q_name, q)
    return out.reshape(p.shape[:-1])


def kl_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log q_v) for normalised log-probs; clamps float rounding below zero.

    NaN/-inf in ``p_log`` give NaN (0 * -inf), -inf in ``q_log`` gives inf: bad input never looks finite.
    """
    weighted = (p_log - q_log).mul_(p_log.exp())  # in place: one temporary instead of two
    return weighted.sum(-1).clamp_min_(0.0)


def reference_terms(base_log_probs: torch.Tensor) -> ReferenceTerms:
    """(p0, sum_v p0_v log p0_v) from pi0's normalised log-probs, computed once and reused by
    ``kl_from_reference_terms`` for every later policy."""
    probs = base_log_probs.exp()
    return probs, torch.linalg.vecdot(probs, base_log_probs)


def kl_from_reference_terms(
    probs: torch.Tensor, neg_entropy: torch.Tensor, log_q: torch.Tensor
) -> torch.Tensor:
    """KL(p0 || q) = sum p0 log p0 - sum p0 log q from ``reference_terms`` and q's normalised log-probs:
    one dot product per distribution. Bit-identical q and p0 log-probs give exactly 0."""
    return (neg_entropy - torch.linalg.vecdot(probs, log_q)).clamp_min_(0.0)


def _tv_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p_log.exp() - q_log.exp()).abs().sum(-1) + _poison(p_log, q_log)


def _l2_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(p_log.exp() - q_log.exp(), dim=-1) + _poison(p_log, q_log)


def _poison(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """0 per row, or NaN where either row holds a -inf log-prob (a -inf logit), which exp() would hide."""
    return (p_log.amin(-1) + q_log.amin(-1)) * 0.0


def forward_kl(base_logits: torch.Tensor, logits: torch.Tensor, support: Support = None) -> torch.Tensor:
    """KL(pi0 || pi) per distribution, from logits (shape: the leading dims): the paper's forgetting
    predictor, and the KL between any two categoricals, KL(p || q) = ``forward_kl(p, q)``."""
    return rowwise(kl_from_log_probs, "base_logits", base_logits, "logits", logits, support)


def reverse_kl(base_logits: torch.Tensor, logits: torch.Tensor, support: Support = None) -> torch.Tensor:
    """KL(pi || pi0) per distribution (an alternative predictor in the paper's Table 1)."""
    return rowwise(kl_from_log_probs, "logits", logits, "base_logits", base_logits, support)


def total_variation(base_logits: torch.Tensor, logits: torch.Tensor, support: Support = None) -> torch.Tensor:
    """0.5 * sum_v |pi0_v - pi_v| per distribution, in [0, 1]."""
    return rowwise(_tv_from_log_probs, "base_logits", base_logits, "logits", logits, support)


def l2_distance(base_logits: torch.Tensor, logits: torch.Tensor, support: Support = None) -> torch.Tensor:
    """||pi0 - pi||_2 between the probability vectors, per distribution, in [0, sqrt(2)]."""
    return rowwise(_l2_from_log_probs, "base_logits", base_logits, "logits", logits, support)


def log_probs(
    logits: torch.Tensor, support: Support = None, name: str = "logits", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Log-probabilities over the support's columns, shape (..., n_support), computed in the compute dtype
    and returned in it (or cast to ``dtype``); NaN/inf logits raise. This is what a reference cache stores:
    later KLs need nothing else from pi0."""
    check_logits(name, logits)
    out = support_log_softmax(logits, support)
    if not bool(
        torch.isfinite(out.sum(-1)).all()
    ):  # NaN/inf logits poison their row's sum; far cheaper than isfinite(out)
        raise_if_nonfinite(name, logits)
    return out if dtype is None else out.to(dtype)


def entropy(logits: torch.Tensor, support: Support = None, name: str = "logits") -> torch.Tensor:
    """H(p) = -sum_v p_v log p_v per distribution over the support, in the compute dtype; shape: the leading
    dims. 0 log 0 = 0, so columns with -inf logits (masked out) contribute nothing instead of NaN. A
    distribution with a NaN or +inf logit, or none finite, raises (the guard would otherwise hide it)."""
    check_logits(name, logits)
    log_p = support_log_softmax(logits, support)
    p = log_p.exp()
    bad = ~torch.isfinite(log_p.amax(-1))  # NaN where a row holds NaN/+inf or only -inf
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} must be finite (or -inf on columns given no mass), got a distribution at {index} with a "
            "NaN or +inf logit or no finite one"
        )
    # Zero the log before multiplying (not the product after): the same values, but where(p > 0, p * log_p, 0)
    # sends 0 * log_p = 0 * -inf = NaN back through the product's gradient at masked columns.
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)
