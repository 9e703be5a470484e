"""OpenVLA-7B, natively: fused DINOv2 + SigLIP towers, projector and Llama-2, loading and saving the public
Hugging Face checkpoint layout, with LoRA fine-tuning and pi0 by disabling the adapter.

``config`` (config.json fields), ``vision`` and ``projector`` (the network), ``processing`` (prompt,
tokenizer, images), ``checkpoint`` (safetensors shards), ``lora`` (adapters), ``model`` (the policy).
"""

from vla_cl.policies.openvla.config import OpenVLAConfig, VisionTowerConfig
from vla_cl.policies.openvla.model import OpenVLAPolicy, select_unnorm_key

__all__ = ["OpenVLAConfig", "OpenVLAPolicy", "VisionTowerConfig", "select_unnorm_key"]
