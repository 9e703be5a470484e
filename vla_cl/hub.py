"""Whether the Hugging Face hub can be reached now, asked before any download.

Both tracks fetch from the hub (OpenVLA checkpoints for the robots; models, task data and lm-eval benchmarks
for the language models), and each must fail at once on an offline machine instead of after
huggingface_hub's retries, with a message saying how to work offline. The question is the same for both,
so it lives here, below them, with no dependency beyond the standard library.
"""

from __future__ import annotations

import os
import socket

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_unreachable(timeout: float = 3.0) -> str:
    """Why the hub cannot be reached now ('' when it can): offline mode, or no TCP connection within
    ``timeout`` seconds."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return ""
    except OSError as error:
        return f"no connection to huggingface.co: {error}"
