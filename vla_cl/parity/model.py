"""The ParityMNIST policy: an MLP 785 -> 512 -> 256 -> 10 whose output is one 10-way action token.

The paper's appendix B.3 model. Its 10 outputs are the logits of a single action position over a 10-token
vocabulary, described by ``ActionTokenizer(vocab_size=10, n_bins=10)`` (ids 0..9 are the labels), so the
training losses and the KL predictors run on the same (B, D=1, V=10) action-token logits a robot policy
produces. Checkpoints are safetensors weights plus a JSON file with the architecture and metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_cl.files import atomic_path, write_json_atomic
from vla_cl.tokenizer import ActionTokenizer

N_LABELS = 10
TOKENIZER = ActionTokenizer(vocab_size=N_LABELS, n_bins=N_LABELS)
SUPPORT = slice(TOKENIZER.bin_ids.start, TOKENIZER.bin_ids.stop)  # every column: the labels 0..9
HIDDEN_LAYERS = ("hidden1", "hidden2")  # module names whose outputs the activation predictors compare


class ParityMLP(nn.Module):
    """785 -> 512 -> ReLU -> 256 -> ReLU -> 10. ``hidden1``/``hidden2`` are the post-ReLU activations."""

    def __init__(
        self, in_features: int = 785, hidden: tuple[int, int] = (512, 256), n_labels: int = N_LABELS
    ):
        super().__init__()
        self.config = {"in_features": in_features, "hidden": list(hidden), "n_labels": n_labels}
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.hidden1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.hidden2 = nn.ReLU()
        self.head = nn.Linear(hidden[1], n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (B, 785) -> label logits (B, 10)."""
        return self.head(self.hidden2(self.fc2(self.hidden1(self.fc1(x)))))

    def action_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (B, 785) -> action-token logits (B, D=1, V=10)."""
        return self(x).unsqueeze(1)


def save_checkpoint(model: ParityMLP, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """``path``.safetensors (weights) and ``path``.json (architecture, tokenizer, ``metadata``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(weights, str(tmp))
    info = {
        "architecture": "ParityMLP",
        "config": model.config,
        "tokenizer": {"vocab_size": TOKENIZER.vocab_size, "n_bins": TOKENIZER.n_bins},
        "metadata": metadata or {},
    }
    # The JSON goes last and by rename: its presence marks a complete checkpoint (see checkpoint_exists).
    write_json_atomic(path.with_suffix(".json"), info)


def load_checkpoint(path: Path) -> tuple[ParityMLP, dict[str, Any]]:
    """The model and its metadata from ``save_checkpoint``'s two files."""
    from safetensors.torch import load_file

    path = Path(path)
    weights_file, info_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not weights_file.exists() or not info_file.exists():
        raise FileNotFoundError(f"checkpoint {path} needs both {weights_file.name} and {info_file.name}")
    info = json.loads(info_file.read_text())
    config = info["config"]
    model = ParityMLP(config["in_features"], tuple(config["hidden"]), config["n_labels"])
    model.load_state_dict(load_file(str(weights_file)))
    return model, info.get("metadata", {})


def checkpoint_exists(path: Path) -> bool:
    path = Path(path)
    return path.with_suffix(".safetensors").exists() and path.with_suffix(".json").exists()
