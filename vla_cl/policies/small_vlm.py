"""``SmallVLMPolicy``: a vision-language-action policy shaped like OpenVLA, small enough to train on a CPU.

Same pipeline as OpenVLA at toy size: image encoder -> projector (MLP) -> causal transformer over
[image tokens, instruction tokens, (state token), BOS, action tokens] that emits the D action tokens
autoregressively, position d conditioned on the observation and tokens < d.

* Image encoder: the RGB image, resized to ``image_size`` (bilinear, antialiased) and scaled to
  [-1, 1], goes through three strided convolutions (x4, x2, x2 downsampling), giving
  (image_size / 16)^2 patch features: 16 tokens at 64x64.
* Instruction tokens: per-word embeddings from the shared ``InstructionEncoder``, padded to a fixed
  ``max_words`` so that every position means the same thing whatever the batch (padding is masked out
  of attention, so it changes nothing).
* Vocabularies: separate embedding tables for words and for actions. Action tokens are ids
  0..n_bins-1 (``ActionTokenizer(vocab_size=n_bins, n_bins=n_bins)``), plus one BOS id (n_bins) that
  only enters the transformer; the output head has exactly n_bins logits, so V = n_bins.
* Positions: one learned absolute embedding per sequence slot; plain causal attention (as OpenVLA's
  Llama), pre-LayerNorm blocks.
* Decoding: ``_decode_tokens`` runs the prefix once and keeps each layer's keys and values, then
  feeds one action token per step (a KV cache), instead of D full passes.
* Value head (optional): a small MLP on the final hidden state at the BOS slot, which has seen the
  whole observation and no action token; as in VLA PPO codebases it shares the trunk, so the value
  loss does shape the transformer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla_cl.policies.base import ObsBatch, Policy, choose_tokens
from vla_cl.policies.instructions import InstructionEncoder, split_words
from vla_cl.policies.state_policy import build_for_task, check_own_vocabulary, check_state, resolve_vocabulary
from vla_cl.tokenizer import ActionTokenizer

KV = tuple[torch.Tensor, torch.Tensor]


def attention_mask(key_valid: torch.Tensor, n_queries: int) -> torch.Tensor:
    """(B, 1, n_queries, n_keys) bool: the queries are the last ``n_queries`` of the n_keys positions;
    each sees the valid keys at or before its own position."""
    n_keys = key_valid.shape[1]
    key_pos = torch.arange(n_keys, device=key_valid.device)
    query_pos = key_pos[n_keys - n_queries :]
    causal = key_pos[None, :] <= query_pos[:, None]
    return (causal[None] & key_valid[:, None, :])[:, None]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """``x`` (B, n, W) are the newest n positions; ``past`` the keys/values of the earlier ones."""
        batch, n, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, n, width))
        return x + self.mlp(self.norm2(x)), (k, v)


class ImageEncoder(nn.Module):
    """uint8 images (B, H, W, 3) -> patch features (B, (image_size / 16)^2, channels[-1])."""

    def __init__(self, image_size: int, channels: Sequence[int]):
        super().__init__()
        if image_size < 16 or image_size % 16 or len(channels) != 3 or min(channels) < 1:
            raise ValueError(
                f"need image_size a multiple of 16 and 3 positive channel widths, got "
                f"image_size={image_size}, channels={list(channels)}"
            )
        c1, c2, c3 = channels
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=4),
            nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.GELU(),
        )

    @property
    def n_patches(self) -> int:
        return (self.image_size // 16) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.net(x).flatten(2).transpose(1, 2)


class SmallVLMPolicy(Policy):
    """Image + instruction (+ state) -> causal transformer -> D autoregressive action tokens."""

    name = "small_vlm"
    autoregressive = True

    def __init__(
        self,
        tokenizer: ActionTokenizer,
        instructions: Sequence[str] = (),
        vocabulary: Sequence[str] | None = None,
        action_dim: int = 7,
        image_size: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        width: int = 128,
        layers: int = 3,
        heads: int = 4,
        max_words: int = 16,
        state_dim: int = 0,
        value_head: bool = False,
    ):
        check_own_vocabulary(tokenizer, action_dim, self.name)
        if width < 1 or heads < 1 or width % heads or layers < 1 or max_words < 1 or state_dim < 0:
            raise ValueError(
                f"need width divisible by heads, layers >= 1, max_words >= 1, state_dim >= 0; got "
                f"width={width}, heads={heads}, layers={layers}, max_words={max_words}, "
                f"state_dim={state_dim}"
            )
        super().__init__(tokenizer, action_dim)
        self.max_words, self.state_dim, self.value_head_enabled = (
            int(max_words),
            int(state_dim),
            bool(value_head),
        )
        self.vision = ImageEncoder(image_size, channels)
        self.projector = nn.Sequential(nn.Linear(channels[-1], width), nn.GELU(), nn.Linear(width, width))
        self.instruction = InstructionEncoder(resolve_vocabulary(instructions, vocabulary, self.name), width)
        self.state_proj = nn.Linear(state_dim, width) if state_dim else None
        n_bins = tokenizer.n_bins
        self.bos = n_bins
        self.action_embedding = nn.Embedding(n_bins + 1, width)
        # Slots: patches, words, state, BOS, then the D - 1 action tokens fed back.
        self.prefix_len = self.vision.n_patches + self.max_words + (1 if state_dim else 0) + 1
        self.position = nn.Parameter(torch.randn(self.prefix_len + action_dim - 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_bins)
        self.critic = (
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)) if value_head else None
        )

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """Tens of thousands of parameters, for tests and smoke runs."""
        return {
            "instructions": ["pick up the red cube", "push the cube forward"],
            "image_size": 32,
            "channels": [8, 16, 16],
            "width": 32,
            "layers": 2,
            "heads": 2,
            "max_words": 8,
            "state_dim": 3,
            "value_head": True,
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            "vocabulary": list(self.instruction.vocabulary),
            "action_dim": self.action_dim,
            "image_size": self.vision.image_size,
            "channels": [m.out_channels for m in self.vision.net[::2]],
            "width": self.head.in_features,
            "layers": len(self.blocks),
            "heads": self.blocks[0].heads,
            "max_words": self.max_words,
            "state_dim": self.state_dim,
            "value_head": self.value_head_enabled,
        }

    @classmethod
    def for_task(cls, *, state_dim: int, action_stats: Mapping[str, Any], instructions: Sequence[str],
                 preset: str, value_head: bool, seed: int) -> SmallVLMPolicy:
        """As ``state_token``'s, reading the image too, with room for the longest instruction's words."""
        start = cls.tiny_config() if preset == "tiny" else {}
        longest = max(len(split_words(text)) for text in instructions)
        return build_for_task(cls, state_dim, action_stats, instructions, preset, value_head, seed,
                              max_words=max(start.get("max_words", 16), longest))

    def add_instruction(self, text: str, init_from: str | None = None) -> list[str]:
        """Add a new task's words to the vocabulary (see ``InstructionEncoder.add_instruction``; here the
        words are read one by one, so ``init_from`` only matches their mean embedding)."""
        return self.instruction.add_instruction(text, init_from)

    # ------------------------------------------------------------------ the network

    def _prefix(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, prefix_len, W) of [patches, words, state, BOS] and their validity mask."""
        if obs.image is None:
            raise ValueError(f"{self.name} needs ObsBatch.image (uint8 (B, H, W, 3)); the batch has none")
        batch = len(obs)
        patches = self.projector(self.vision(obs.image))
        words, word_mask = self.instruction.word_embeddings(obs.instruction, self.max_words)
        device = patches.device
        ones = lambda n: torch.ones(batch, n, dtype=torch.bool, device=device)
        parts, valid = [patches, words], [ones(patches.shape[1]), word_mask]
        if self.state_proj is not None:
            parts.append(self.state_proj(check_state(obs, self.state_dim, self.name).to(device))[:, None])
            valid.append(ones(1))
        parts.append(self.action_embedding(torch.full((batch, 1), self.bos, dtype=torch.long, device=device)))
        valid.append(ones(1))
        return torch.cat(parts, dim=1) + self.position[: self.prefix_len], torch.cat(valid, dim=1)

    def _run(
        self, x: torch.Tensor, valid: torch.Tensor, cache: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """The blocks over the newest positions ``x``; ``valid`` covers every position so far."""
        mask = attention_mask(valid, x.shape[1])
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.norm(x), new_cache

    def _check_tokens(self, obs: ObsBatch, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            raise ValueError(
                f"{self.name} is autoregressive: action_logits needs the action tokens (B, D) "
                "to teacher-force on"
            )
        if tokens.shape != (len(obs), self.action_dim) or tokens.is_floating_point():
            raise ValueError(
                f"tokens must be integer ids of shape {(len(obs), self.action_dim)}, "
                f"got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if bool(((tokens < 0) | (tokens >= self.bos)).any()):
            raise ValueError(
                f"tokens must lie in [0, {self.bos}), got min {int(tokens.min())} max {int(tokens.max())}"
            )
        return tokens.to(self.head.weight.device, torch.long)

    # ------------------------------------------------------------------ the policy interface

    def action_logits(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, n_bins); row d predicts token d from the observation and tokens < d (one pass)."""
        tokens = self._check_tokens(obs, tokens)
        x, valid = self._prefix(obs)
        fed = tokens[:, :-1]
        if fed.shape[1]:
            x = torch.cat([x, self.action_embedding(fed) + self.position[self.prefix_len :]], dim=1)
            valid = torch.cat([valid, torch.ones_like(fed, dtype=torch.bool)], dim=1)
        hidden, _ = self._run(x, valid)
        return self.head(hidden[:, -self.action_dim :])

    def _decode_tokens(
        self, obs: ObsBatch, greedy: bool, temperature: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        support = self.action_support
        x, valid = self._prefix(obs)
        hidden, cache = self._run(x, valid)
        tokens = torch.empty((len(obs), self.action_dim), dtype=torch.long, device=valid.device)
        steps = []
        for d in range(self.action_dim):
            steps.append(self.head(hidden[:, -1]))
            tokens[:, d] = choose_tokens(steps[-1][:, support.start : support.stop], greedy, temperature,
                                         generator) + support.start
            if d + 1 < self.action_dim:
                step = self.action_embedding(tokens[:, d]) + self.position[self.prefix_len + d]
                valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
                hidden, cache = self._run(step[:, None], valid, cache)
        return tokens, torch.stack(steps, dim=1)

    def value(self, obs: ObsBatch) -> torch.Tensor:
        if self.critic is None:
            return super().value(obs)
        x, valid = self._prefix(obs)
        hidden, _ = self._run(x, valid)
        return self.critic(hidden[:, -1]).squeeze(-1)
