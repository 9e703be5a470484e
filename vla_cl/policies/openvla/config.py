"""OpenVLA's checkpoint configuration: the fields of its Hugging Face ``config.json``, read and written.

The public ``openvla/openvla-7b`` checkpoint describes its architecture by name: ``timm_model_ids``
pick the two vision towers (DINOv2 ViT-L/14 with 4 registers and SigLIP So400m/14), ``text_config``
holds a sparse Llama config whose missing fields mean Llama-2-7B. ``OpenVLAConfig`` resolves those names
to explicit sizes so the modules never consult timm or a hub. Two optional fields extend the format
(OpenVLA's own code ignores unknown fields): ``vision_towers`` gives tower sizes explicitly (tiny test
checkpoints use it) and ``default_unnorm_key`` records which dataset statistics a checkpoint we saved
acts with, so nobody has to pass that name again. ``prompt_suffix_token_id`` is the id OpenVLA appends
after "Out:" (29871, Llama-2's bare "▁"); tiny tokenizers name their own.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# The vision towers OpenVLA uses, in timm's terms (vision_transformer.py model definitions):
# DINOv2 has a class token, 4 register tokens and LayerScale; SigLIP has neither and ends in an
# attention-pool head that OpenVLA never runs (its weights are still in the checkpoint).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VisionTowerConfig:
    """Sizes of one timm-style ViT tower, and the normalisation its pixels get."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden_dim: int
    patch_size: int = 14
    class_token: bool = False
    num_register_tokens: int = 0
    layer_scale: bool = False  # LayerScale after attention and MLP (checkpoint name: ls1/ls2.scale_factor)
    attention_pool: bool = False  # a MAP head (attn_pool.*), stored but unused by OpenVLA
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "mlp_hidden_dim", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"vision tower {name} must be a positive int, got {value!r}")
        if self.depth < 2:
            raise ValueError(f"vision tower depth must be >= 2 (OpenVLA reads block depth-2), got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"vision tower embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"vision tower {name} must have 3 entries (RGB), got {value}")
            object.__setattr__(self, name, value)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_register_tokens

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


KNOWN_TOWERS: dict[str, VisionTowerConfig] = {
    "vit_large_patch14_reg4_dinov2": VisionTowerConfig(
        embed_dim=1024, depth=24, num_heads=16, mlp_hidden_dim=4096, class_token=True,
        num_register_tokens=4, layer_scale=True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ),
    # timm: mlp_ratio=3.7362 -> int(1152 * 3.7362) = 4304 hidden units.
    "vit_so400m_patch14_siglip_224": VisionTowerConfig(
        embed_dim=1152, depth=27, num_heads=16, mlp_hidden_dim=4304, attention_pool=True,
    ),
}

# Llama-2-7B: what every field missing from OpenVLA's sparse ``text_config`` means.
LLAMA2_7B: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32000,
}
# Keys of a text_config that describe the file, not the model; never handed to LlamaConfig.
_TEXT_CONFIG_META = ("model_type", "torch_dtype", "dtype", "transformers_version", "architectures", "_name_or_path")
# OpenVLA's Prismatic code maps these LLM backbone ids onto Llama (the other ids are Mistral/Phi).
LLAMA_BACKBONES = ("llama2-7b-pure", "llama2-13b-pure", "llama2-7b-chat", "llama2-13b-chat",
                   "vicuna-v15-7b", "vicuna-v15-13b")
# Fields of config.json this class owns; anything else found there is carried through unchanged.
_OWN_FIELDS = (
    "model_type", "vision_backbone_id", "llm_backbone_id", "arch_specifier", "use_fused_vision_backbone",
    "image_resize_strategy", "image_sizes", "timm_model_ids", "timm_override_act_layers", "hf_llm_id",
    "llm_max_length", "pad_token_id", "pad_to_multiple_of", "n_action_bins", "norm_stats", "text_config",
    "vision_towers", "prompt_suffix_token_id", "default_unnorm_key",
)


def _tower_key(timm_id: str) -> str:
    return timm_id.split(".", 1)[0]  # drop timm's pretrained tag (".lvd142m")


@dataclasses.dataclass
class OpenVLAConfig:
    """The fields of OpenVLA's config.json (``OpenVLAConfig`` in its ``configuration_prismatic.py``)."""

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = "no-align+fused-gelu-mlp"
    use_fused_vision_backbone: bool = True
    image_resize_strategy: str = "resize-naive"
    image_sizes: list[int] = dataclasses.field(default_factory=lambda: [224, 224])
    timm_model_ids: list[str] = dataclasses.field(
        default_factory=lambda: ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
    )
    timm_override_act_layers: list[str | None] = dataclasses.field(default_factory=lambda: [None, None])
    hf_llm_id: str = "meta-llama/Llama-2-7b-hf"
    llm_max_length: int = 2048
    pad_token_id: int = 32000
    pad_to_multiple_of: int = 64
    n_action_bins: int = 256
    norm_stats: dict[str, Any] | None = None
    text_config: dict[str, Any] = dataclasses.field(default_factory=lambda: {"model_type": "llama"})
    vision_towers: list[VisionTowerConfig] | None = None  # explicit sizes; None = from timm_model_ids
    prompt_suffix_token_id: int = 29871
    default_unnorm_key: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # other config.json fields, kept as found

    def __post_init__(self) -> None:
        if not self.use_fused_vision_backbone or len(self.timm_model_ids) != 2:
            raise ValueError(
                "only OpenVLA's fused DINOv2 + SigLIP backbone is implemented "
                f"(use_fused_vision_backbone=true, 2 timm_model_ids); got use_fused_vision_backbone="
                f"{self.use_fused_vision_backbone}, timm_model_ids={self.timm_model_ids}"
            )
        if self.llm_backbone_id not in LLAMA_BACKBONES:
            raise ValueError(f"llm_backbone_id {self.llm_backbone_id!r} is not a Llama backbone; "
                             f"supported: {', '.join(LLAMA_BACKBONES)}")
        if self.text_config.get("model_type", "llama") != "llama":
            raise ValueError(f"text_config.model_type must be 'llama', got {self.text_config.get('model_type')!r}")
        if self.image_resize_strategy != "resize-naive":
            raise ValueError(f"image_resize_strategy {self.image_resize_strategy!r} is not supported; "
                             "OpenVLA checkpoints use 'resize-naive' (a plain resize to the tower size)")
        if any(act is not None for act in self.timm_override_act_layers):
            raise ValueError(f"timm_override_act_layers must be [null, null] (exact GELU), "
                             f"got {self.timm_override_act_layers}")
        if len(self.image_sizes) != 2 or self.image_sizes[0] != self.image_sizes[1]:
            raise ValueError(f"image_sizes must be two equal sizes, got {self.image_sizes}")
        if self.vision_towers is not None:
            self.vision_towers = [
                t if isinstance(t, VisionTowerConfig) else VisionTowerConfig(**t) for t in self.vision_towers
            ]
        towers = self.towers()
        for tower in towers:
            if self.image_size % tower.patch_size:
                raise ValueError(f"image size {self.image_size} is not a multiple of patch size {tower.patch_size}")
        if towers[0].patch_size != towers[1].patch_size:
            raise ValueError("both vision towers must use the same patch size (their patches are concatenated)")
        if self.action_vocab_size < self.n_action_bins:
            raise ValueError(
                f"text_config.vocab_size - pad_to_multiple_of = {self.action_vocab_size} leaves no room for "
                f"{self.n_action_bins} action tokens"
            )
        if self.default_unnorm_key is not None and self.default_unnorm_key not in (self.norm_stats or {}):
            raise ValueError(f"default_unnorm_key {self.default_unnorm_key!r} is not in norm_stats "
                             f"(have: {sorted(self.norm_stats or {})})")

    # ------------------------------------------------------------------ derived sizes

    def towers(self) -> list[VisionTowerConfig]:
        """The two towers' sizes: [DINOv2 (featurizer), SigLIP (fused_featurizer)]."""
        if self.vision_towers is not None:
            if len(self.vision_towers) != 2:
                raise ValueError(f"vision_towers must list 2 towers, got {len(self.vision_towers)}")
            return list(self.vision_towers)
        unknown = [t for t in self.timm_model_ids if _tower_key(t) not in KNOWN_TOWERS]
        if unknown:
            raise ValueError(f"unknown vision towers {unknown}; known: {sorted(KNOWN_TOWERS)} "
                             "(or give their sizes in config.json's 'vision_towers')")
        return [KNOWN_TOWERS[_tower_key(t)] for t in self.timm_model_ids]

    @property
    def image_size(self) -> int:
        return int(self.image_sizes[0])

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.towers()[0].patch_size) ** 2

    @property
    def text(self) -> dict[str, Any]:
        """The text config with every Llama-2-7B default filled in."""
        return {**LLAMA2_7B, **self.text_config}

    @property
    def action_vocab_size(self) -> int:
        """The vocabulary size the action tokens count back from, as OpenVLA computes it: the padded
        LLM vocabulary minus ``pad_to_multiple_of`` (32064 - 64 = 32000, so ids 31744..31999)."""
        return int(self.text["vocab_size"]) - int(self.pad_to_multiple_of)

    def llama_config(self, attn_implementation: str = "sdpa") -> Any:
        """The ``transformers.LlamaConfig`` of the language model."""
        from transformers import LlamaConfig

        fields = {k: v for k, v in self.text.items() if k not in _TEXT_CONFIG_META}
        if fields.get("rope_scaling"):
            raise ValueError(f"text_config.rope_scaling is not supported, got {fields['rope_scaling']!r}")
        config = LlamaConfig(**fields)
        config._attn_implementation = attn_implementation
        return config

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenVLAConfig:
        """Parse a config.json dict; a config that is not OpenVLA's fails with a ValueError saying why."""
        model_type = data.get("model_type")
        if model_type != "openvla":
            raise ValueError(f"not an OpenVLA checkpoint: config.json has model_type {model_type!r} "
                             "(expected 'openvla', as in openvla/openvla-7b)")
        missing = [k for k in ("norm_stats", "text_config", "timm_model_ids", "image_sizes") if k not in data]
        if missing:
            raise ValueError(f"OpenVLA config.json is missing fields {missing}")
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: data.pop(k) for k in list(data) if k in known and k != "extra"}
        data.pop("model_type")
        return cls(**kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """The config.json content: OpenVLA's fields (text_config written out in full) plus the extensions."""
        out: dict[str, Any] = {"model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"]}
        out.update(copy.deepcopy(self.extra))
        for field in dataclasses.fields(self):
            if field.name in ("extra", "vision_towers", "text_config"):
                continue
            out[field.name] = copy.deepcopy(getattr(self, field.name))
        out["text_config"] = copy.deepcopy(self.text)
        if self.vision_towers is not None:
            out["vision_towers"] = [t.to_dict() for t in self.vision_towers]
        return out

    # ------------------------------------------------------------------ presets

    @classmethod
    def full_size(cls, norm_stats: dict[str, Any] | None = None) -> OpenVLAConfig:
        """openvla/openvla-7b's architecture (7.54B parameters)."""
        return cls(norm_stats=norm_stats, text_config={"model_type": "llama", "pad_token_id": 32000,
                                                       "vocab_size": 32064})

    @classmethod
    def tiny(cls, norm_stats: dict[str, Any] | None = None, image_size: int = 28,
             prompt_suffix_token_id: int = 3) -> OpenVLAConfig:
        """The same layout with toy sizes (a few hundred thousand parameters), for tests and smoke runs.
        The LLM vocabulary is 576 = 512 + 64 padding, so the 256 action tokens are ids 256..511."""
        return cls(
            image_sizes=[image_size, image_size],
            norm_stats=norm_stats,
            pad_token_id=512,
            text_config={
                "model_type": "llama", "vocab_size": 576, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512, "pad_token_id": 512,
            },
            vision_towers=[
                VisionTowerConfig(embed_dim=32, depth=3, num_heads=2, mlp_hidden_dim=64, class_token=True,
                                  num_register_tokens=4, layer_scale=True, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                VisionTowerConfig(embed_dim=48, depth=3, num_heads=2, mlp_hidden_dim=80, attention_pool=True),
            ],
            prompt_suffix_token_id=prompt_suffix_token_id,
        )
