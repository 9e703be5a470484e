"""OpenVLA's projector from fused vision features to the language model's embedding width.

For a fused backbone Prismatic uses three linear layers: fc1 (vision_dim -> 4 vision_dim), GELU,
fc2 (-> llm_dim), GELU, fc3 (llm_dim -> llm_dim); nn.GELU's exact erf form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedProjector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(features)))))
