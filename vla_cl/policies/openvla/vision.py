"""OpenVLA's fused vision backbone, written natively with timm's parameter names.

OpenVLA builds its two towers with timm (``vit_large_patch14_reg4_dinov2`` and
``vit_so400m_patch14_siglip_224``) and reads the *second-to-last* block's output (timm's
``get_intermediate_layers(n={depth - 2})``): no final norm, prefix tokens dropped. This module
reproduces exactly that forward pass with plain torch so that neither timm nor torchvision is needed,
and keeps every parameter the checkpoint stores (the last block, the final norm, SigLIP's
attention-pool head) so that loading stays strict, even though the forward never uses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla_cl.policies.openvla.config import VisionTowerConfig

# timm's ViTs use LayerNorm(eps=1e-6) throughout.
LAYER_NORM_EPS = 1e-6


class LayerScale(nn.Module):
    """Per-channel scaling. timm calls the parameter ``gamma``; OpenVLA's checkpoints rename it
    ``scale_factor`` because Hugging Face's loader rewrites names containing "gamma"."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout: q, k, v stacked on dim 0)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), no mask: ViTs see all tokens
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU: timm's default, OpenVLA overrides none


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, config.num_heads)
        self.ls1 = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, config.mlp_hidden_dim)
        self.ls2 = LayerScale(dim) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (B, num_patches, dim), row-major patches


class AttentionPoolHead(nn.Module):
    """SigLIP's multi-head attention-pooling head (timm ``AttentionPoolLatent``). OpenVLA never runs it;
    it exists so that the checkpoint's ``attn_pool.*`` tensors have a place to load into."""

    def __init__(self, dim: int, mlp_hidden: int):
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("OpenVLA uses patch features, not SigLIP's pooled embedding")


class VisionTower(nn.Module):
    """One timm-style ViT returning the patch features of block ``depth - 2`` (prefix tokens dropped)."""

    def __init__(self, config: VisionTowerConfig, image_size: int):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        num_patches = (image_size // config.patch_size) ** 2
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        if config.class_token:
            self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        if config.num_register_tokens:
            self.reg_token = nn.Parameter(torch.empty(1, config.num_register_tokens, dim))
        # Position embeddings cover the patches only: DINOv2-reg4 in timm uses no_embed_class=True.
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # stored, unused: features are taken before it
        if config.attention_pool:
            self.attn_pool = AttentionPoolHead(dim, config.mlp_hidden_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = []
        if self.config.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.config.num_register_tokens:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)  # [cls, registers, patches], added after the position embedding
        for block in self.blocks[: self.config.depth - 1]:  # up to and including block depth-2
            x = block(x)
        return x[:, self.config.num_prefix_tokens :]


class FusedVisionBackbone(nn.Module):
    """DINOv2 (``featurizer``) on channels 0-2 and SigLIP (``fused_featurizer``) on channels 3-5 of the
    6-channel pixel tensor; their patch features are concatenated as [dino, siglip] per patch."""

    def __init__(self, towers: list[VisionTowerConfig], image_size: int):
        super().__init__()
        self.featurizer = VisionTower(towers[0], image_size)
        self.fused_featurizer = VisionTower(towers[1], image_size)
        self.embed_dim = towers[0].embed_dim + towers[1].embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 6:
            raise ValueError(f"pixel_values must be (B, 6, H, W), got {tuple(pixel_values.shape)}")
        dino, siglip = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=2)
