"""vla-cl: fine-tune robot policies in simulation and measure how much of the old skill set survives.

The package is organised by component (``envs``, ``policies``, ``updaters``, ``evaluation``, ``kl``,
``llm_track``); heavy dependencies are imported only when a component is used, so ``import vla_cl``
and ``vla-cl --help`` stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names re-exported lazily: name -> module that defines it.
_LAZY = {"ActionTokenizer": "vla_cl.tokenizer", "NormStats": "vla_cl.tokenizer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla_cl' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]  # noqa: PLE0604 (the lazy names are strings)
