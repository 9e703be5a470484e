"""``OpenVLAPolicy``: OpenVLA-7B written natively, behind the project's action-token policy interface.

The network is OpenVLA's, parameter for parameter (see ``vision.py``, ``projector.py``): the language
model is ``transformers.LlamaForCausalLM`` fed ``inputs_embeds`` = [BOS embedding] + the projected
patch embeddings + the embeddings of the remaining prompt tokens, positions 0..N-1, plain causal
attention. No ``trust_remote_code``, timm or torchvision is involved, so the model does not depend on
the transformers version the way OpenVLA's remote code does (which silently ignores the image on
transformers >= 4.50).

Batches: prompts of different lengths are padded between the patches and the prompt (attention mask
0, position ids counting only real tokens), so every row computes what it would alone and all rows'
action tokens share the final columns.

Decoding: ``generate(greedy=True)`` takes the argmax over the whole vocabulary, as OpenVLA's
``predict_action`` does, and feeds that token back. A token outside the 256-token action slice (a
trained model practically never emits one) is reported as the nearest action id, which decodes to
the action OpenVLA's decoder gives it (its clip). Sampling draws from the action slice only, the
distribution ``log_probs`` and the KL are defined on. ``greedy_vocabulary="action"`` restricts the argmax
to the slice too.

pi0: after ``add_lora`` the base weights are frozen and ``reference()`` disables the adapters with
peft's ``disable_adapter()``, so pi0 costs no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_cl.policies.base import ObsBatch, Policy
from vla_cl.policies.checkpoint import check_tensors  # one check of names and shapes for both formats
from vla_cl.policies.openvla import checkpoint as ckpt
from vla_cl.policies.openvla import processing
from vla_cl.policies.openvla.config import OpenVLAConfig
from vla_cl.policies.openvla.projector import FusedProjector
from vla_cl.policies.openvla.vision import FusedVisionBackbone
from vla_cl.tokenizer import ActionTokenizer, NormStats

WEIGHT_INITS = ("random", "empty")
VALUE_WIDTH = 512  # hidden width of the value head's MLP
GREEDY_VOCABULARIES = ("full", "action")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def select_unnorm_key(config: OpenVLAConfig, unnorm_key: str | None) -> str | None:
    """The dataset whose statistics un-normalise actions: the one asked for, else the checkpoint's
    default, else its only dataset. ``None`` when the checkpoint has no statistics (random weights)."""
    stats = config.norm_stats or {}
    names = sorted(stats)
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    key = unnorm_key if unnorm_key is not None else config.default_unnorm_key
    if key is None:
        if len(names) > 1:
            raise ValueError(f"this checkpoint has action statistics for {len(names)} datasets; "
                             f"choose one with unnorm_key= from: {shown}")
        return names[0] if names else None
    if key not in stats:
        raise ValueError(f"unnorm_key {key!r} has no statistics in this checkpoint; it has: {shown or 'none'}")
    return key


def _init_random_(module: nn.Module, seed: int) -> None:
    """Random weights for tests and benchmarks, not a recipe for training from scratch: matrices get
    std 1/sqrt(fan_in) so that every nonlinearity sees O(1) inputs (a test of the GELU's form or of
    the attention must not pass because activations are tiny); tokens and position embeddings 0.02."""
    generator: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.device not in generator:
                generator[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "scale_factor":
                param.fill_(0.1)  # LayerScale; DINOv2 starts at 1e-5, which would hide the blocks in tests
            elif leaf == "bias":
                param.normal_(0.0, 0.02, generator=generator[param.device])
            elif param.ndim == 1:
                param.fill_(1.0)  # LayerNorm / RMSNorm weights
            else:
                std = 0.02 if leaf != "weight" else (param[0].numel()) ** -0.5
                param.normal_(0.0, std, generator=generator[param.device])


def _rebuild_rotary_(model: nn.Module, device: torch.device) -> None:
    """Recompute rotary-embedding buffers after ``to_empty``: they are not in the checkpoint (computed at
    construction, which happened on the meta device). Kept float32 whatever the weights' dtype."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device(device), _default_dtype(torch.float32):
                fresh = type(module)(config=module.config)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], fresh)


class _LMCall:
    """transformers renamed ``past_key_values`` to ``cache`` (and ``num_logits_to_keep`` to
    ``logits_to_keep``); this finds the names the installed version uses, once."""

    def __init__(self) -> None:
        from transformers import LlamaForCausalLM

        params = inspect.signature(LlamaForCausalLM.forward).parameters
        self.cache = "cache" if "cache" in params else "past_key_values"
        self.keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)

    def __call__(self, lm: nn.Module, cache: Any = None, keep: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if cache is not None:
            kwargs[self.cache] = cache
        if keep is not None and self.keep is not None:
            kwargs[self.keep] = keep
        out = lm(**kwargs)
        logits = out.logits if keep is None or self.keep is not None else out.logits[:, -keep:]
        return logits, getattr(out, self.cache, None)


class OpenVLAPolicy(Policy):
    """OpenVLA-7B (or the same layout at any size) as an autoregressive action-token policy."""

    name = "openvla"
    autoregressive = True

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def __init__(
        self,
        config: OpenVLAConfig,
        text_tokenizer: Any,
        unnorm_key: str | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        weights: str = "random",
        seed: int = 0,
        resize: str = "pil",
        greedy_vocabulary: str = "full",
        attn_implementation: str = "sdpa",
    ):
        if weights not in WEIGHT_INITS:
            raise ValueError(f"weights must be one of {WEIGHT_INITS}, got {weights!r}")
        if resize not in processing.RESIZE_BACKENDS:
            raise ValueError(f"resize must be one of {processing.RESIZE_BACKENDS}, got {resize!r}")
        if greedy_vocabulary not in GREEDY_VOCABULARIES:
            raise ValueError(f"greedy_vocabulary must be one of {GREEDY_VOCABULARIES}, got {greedy_vocabulary!r}")
        device = torch.device(device)
        dtype = torch_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        key = select_unnorm_key(config, unnorm_key)
        stats = NormStats.from_checkpoint(config.norm_stats, key) if key is not None else None
        tokenizer = ActionTokenizer(vocab_size=config.action_vocab_size, n_bins=config.n_action_bins, stats=stats)
        super().__init__(tokenizer, stats.action_dim if stats is not None else 7)
        self.config, self.unnorm_key, self.text_tokenizer = config, key, text_tokenizer
        self.resize, self.greedy_vocabulary = resize, greedy_vocabulary
        # Built on the meta device and then allocated once, uninitialised: a 7B model is never
        # initialised only to be overwritten by the checkpoint.
        with torch.device("meta"), _default_dtype(dtype):
            from transformers import LlamaForCausalLM

            self.vision_backbone = FusedVisionBackbone(config.towers(), config.image_size)
            llm_dim = int(config.text["hidden_size"])
            self.projector = FusedProjector(self.vision_backbone.embed_dim, llm_dim)
            self.language_model = LlamaForCausalLM(config.llama_config(attn_implementation))
        self.to_empty(device=device)
        _rebuild_rotary_(self.language_model, device)
        if weights == "random":
            _init_random_(self, seed)
        self._lm_call = _LMCall()
        self.critic: nn.Module | None = None  # the value head (PPO), see with_value_head
        # Where the base weights come from (a checkpoint, or random with a seed) and the LoRA settings: a
        # fine-tuning checkpoint stores only the adapters and the value head, and rebuilds the rest from these.
        self.base_source: dict[str, Any] = {"kind": "random", "seed": int(seed)} if weights == "random" else {}
        self.lora_settings: dict[str, Any] | None = None
        self.loaded_from: Path | None = None  # the fine-tuning checkpoint this policy was read from, if any

    # ------------------------------------------------------------------ construction from checkpoints

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        unnorm_key: str | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        text_tokenizer: Any = None,
        revision: str | None = None,
        **options: Any,
    ) -> OpenVLAPolicy:
        """Load an OpenVLA checkpoint: a folder or a hub repo id (``openvla/openvla-7b``) in OpenVLA's layout,
        or a fine-tuning checkpoint of this library (LoRA adapters + value head + a reference to the base,
        as ``save_pretrained`` writes it for a policy with adapters), which loads its base first."""
        local = Path(name_or_path).expanduser()
        if local.is_dir() and ckpt.is_finetuning_checkpoint(local):
            from vla_cl.policies.checkpoint import check_header, load_checkpoint_into, read_config_json

            saved = read_config_json(local)
            check_header(saved, local, cls.name)
            recorded = saved["config"]
            if unnorm_key is not None and unnorm_key != recorded.get("unnorm_key"):
                raise ValueError(f"{local} was fine-tuned acting with the {recorded.get('unnorm_key')!r} statistics; "
                                 f"unnorm_key={unnorm_key!r} would change what its tokens mean")
            policy = cls._from_finetuning_config(recorded, torch_dtype=torch_dtype, device=device)
            load_checkpoint_into(policy, local)  # digest, names and shapes checked
            policy.loaded_from = local.resolve()
            return policy.eval()
        folder = ckpt.resolve_checkpoint(name_or_path, revision)
        config = ckpt.read_config(folder)
        select_unnorm_key(config, unnorm_key)  # fail on a bad dataset name before reading any weights
        found = ckpt.tensor_index(folder)
        expected = cls.expected_shapes(config)
        check_tensors(expected, {k: shape for k, (_, shape) in found.items()}, str(folder))
        if text_tokenizer is None:
            text_tokenizer = processing.load_text_tokenizer(folder)
        policy = cls(config, text_tokenizer, unnorm_key, torch_dtype=torch_dtype, device=device,
                     weights="empty", **options)
        ckpt.load_tensors(policy, found)
        policy.base_source = {"kind": "checkpoint", "name_or_path": str(name_or_path), "revision": revision}
        return policy

    @classmethod
    def tiny(cls, norm_stats: dict[str, Any] | None = None, unnorm_key: str | None = None, seed: int = 0,
             **options: Any) -> OpenVLAPolicy:
        """A randomly initialised policy in OpenVLA's layout with toy sizes and the offline stand-in
        tokenizer: the same code path as OpenVLA-7B, for tests and smoke runs on a CPU."""
        config = OpenVLAConfig.tiny(norm_stats=norm_stats, prompt_suffix_token_id=3)
        return cls(config, processing.standin_tokenizer(), unnorm_key, seed=seed, **options)

    @staticmethod
    def expected_shapes(config: OpenVLAConfig) -> dict[str, tuple[int, ...]]:
        """Every parameter name and shape of the architecture ``config`` describes (no memory used)."""
        from transformers import LlamaForCausalLM

        with torch.device("meta"):
            modules = {
                "vision_backbone": FusedVisionBackbone(config.towers(), config.image_size),
                "language_model": LlamaForCausalLM(config.llama_config()),
            }
            modules["projector"] = FusedProjector(modules["vision_backbone"].embed_dim, int(config.text["hidden_size"]))
        return {f"{prefix}.{name}": tuple(p.shape) for prefix, module in modules.items()
                for name, p in module.named_parameters()}

    def config_dict(self) -> dict[str, Any]:
        config = self.config.to_dict()
        config["default_unnorm_key"] = self.unnorm_key
        return {"config": config, "unnorm_key": self.unnorm_key, "resize": self.resize,
                "greedy_vocabulary": self.greedy_vocabulary, "base": self.base_source, "lora": self.lora_settings,
                "value_head": self.has_value_head}

    # ------------------------------------------------------------------ the policy interface's hooks

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"image_size": OpenVLAConfig.tiny().image_size}

    @classmethod
    def fresh_observations(cls, preset: str) -> tuple[frozenset[str], int | None]:
        if preset != "tiny":
            cls.for_task(state_dim=0, action_stats={}, instructions=[], preset=preset, value_head=False, seed=0)
        return frozenset({"image"}), OpenVLAConfig.tiny().image_size

    @classmethod
    def checkpoint_observations(cls, saved: dict[str, Any]) -> tuple[frozenset[str], int | None, int]:
        """Either format: this library's fine-tuning checkpoint (the OpenVLA config inside ``config``) or
        OpenVLA's own config.json."""
        config = saved["config"]["config"] if "format" in saved else saved
        stats = config.get("norm_stats") or {}
        dims = {len(entry.get("action", entry).get("q01", [])) for entry in stats.values()} - {0}
        return frozenset({"image"}), int(config.get("image_sizes", [224])[0]), dims.pop() if len(dims) == 1 else 7

    @classmethod
    def for_task(cls, *, state_dim: int, action_stats: dict[str, Any], instructions: Any, preset: str,
                 value_head: bool, seed: int) -> OpenVLAPolicy:
        """Only ``preset=tiny``: a toy-sized random OpenVLA acting with the task's action statistics (dataset
        ``task``), for tests and smoke runs. A real one comes from a checkpoint (``init=``)."""
        if preset != "tiny":
            raise ValueError("policy=openvla is built from a checkpoint: pass init=openvla/openvla-7b (a hub id) or "
                             "a local checkpoint folder; policy_preset=tiny builds a toy-sized random OpenVLA")
        stats = {"task": {"action": {key: list(action_stats[key]) for key in ("q01", "q99", "mask")}}}
        policy = cls.tiny(norm_stats=stats, unnorm_key="task", seed=seed)
        return policy.with_value_head(seed) if value_head else policy

    @classmethod
    def load_options(cls, task: Any, device: str, folder: str | Path | None = None) -> dict[str, Any]:
        """The task's action dataset (``bridge_orig`` on the Bridge scenes) as ``unnorm_key`` (task None: the
        checkpoint's own); on a GPU, the weights straight onto it in bf16 (a 7B model never passes through the
        CPU in float32)."""
        on_gpu = torch.device(device).type == "cuda"
        ours = folder is not None and Path(folder).is_dir() and ckpt.is_finetuning_checkpoint(Path(folder))
        key = {} if task is None or ours else {"unnorm_key": getattr(task, "action_dataset", None)}
        return {**key, "device": device, **({"torch_dtype": torch.bfloat16} if on_gpu else {})}

    def env_actions(self, actions: Any) -> Any:
        """With ``bridge_orig`` statistics, SimplerEnv's post-processing (roll/pitch/yaw to axis-angle, gripper
        ``2 * (g > 0.5) - 1``; ``vla_cl.actions``), chosen by the checkpoint's statistics, never by
        a string the user passes."""
        from vla_cl.actions import conversion_for

        convert = conversion_for(self.unnorm_key)
        return actions if convert is None else convert(actions)

    def policy_actions(self, actions: Any) -> Any:
        """Demonstrations in the env's convention as OpenVLA's actions (with ``bridge_orig`` statistics: the
        axis-angle rotation as roll/pitch/yaw, the gripper's +1 / -1 as openness 1 / 0)."""
        from vla_cl.actions import inverse_for

        invert = inverse_for(self.unnorm_key)
        return actions if invert is None else invert(actions)

    def prepare_finetuning(self, lora_rank: int = 32, **_: Any) -> None:
        """LoRA on the language model (``add_lora``): the adapters (and a value head, if any) are what
        fine-tuning trains; pi0 is the same model with the adapters disabled.

        A policy that already has adapters (a warmed-up pi0 read from its fine-tuning checkpoint) is pi0 as a
        whole: its adapters are merged into the weights (:meth:`merge_adapters`) and fresh ones added, so that
        disabling them gives that pi0, not the checkpoint it was warmed up from. Its fine-tuning checkpoints
        then name it as their base (``base: {kind: merged, name_or_path: <pi0's folder>}``)."""
        if self.has_adapter:
            if self.loaded_from is None:
                raise ValueError("this OpenVLA policy already has adapters and was not read from a checkpoint, so a "
                                 "fine-tuning checkpoint could not name its base; save it and load it again first")
            self.merge_adapters()
            self.base_source = {"kind": "merged", "name_or_path": str(self.loaded_from)}
        self.add_lora(rank=lora_rank)

    def merge_adapters(self) -> None:
        """Fold every LoRA adapter into its base weight (W + scale B A) and drop the adapters: the same function
        with plain weights, which later adapters then start from."""
        for name in ("language_model", "projector"):
            module = getattr(self, name)
            if _is_peft(module):
                setattr(self, name, module.merge_and_unload())
        self.lora_settings = None

    def with_value_head(self, seed: int) -> OpenVLAPolicy:
        """Attach a value head (in place): an MLP on the language model's last hidden state at the last
        prompt position, the state from which the first action token is predicted (RL4VLA's choice). It
        trains with the adapters; pi0 never uses it."""
        width = int(self.config.text["hidden_size"])
        generator = torch.Generator().manual_seed(seed)
        head = nn.Sequential(nn.Linear(width, VALUE_WIDTH), nn.GELU(), nn.Linear(VALUE_WIDTH, 1))
        with torch.no_grad():
            for layer in (head[0], head[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * layer.in_features ** -0.5)
                layer.bias.zero_()
        self.critic = head.to(self.device)  # float32 whatever the model's dtype: values need the precision
        return self

    def value(self, obs: ObsBatch) -> torch.Tensor:
        if self.critic is None:
            return super().value(obs)
        embeds, mask = self.prefix(obs)
        hidden = self.llm().model(inputs_embeds=embeds, attention_mask=mask, position_ids=self._positions(mask),
                                  use_cache=False).last_hidden_state
        return self.critic(hidden[:, -1].float()).squeeze(-1)

    def representation_modules(self) -> list[str]:
        """The language model's last two decoder layers (their outputs averaged over the sequence): the
        representations the LLM track compares too; every activation of a 7B model would not fit."""
        layers = [name for name, _ in self.named_modules() if name.split(".")[-2:-1] == ["layers"]
                  and name.startswith("language_model")]
        return layers[-2:]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """With adapters: the LoRA weights and the value head only (the base is rebuilt from ``base_source``);
        without: every weight."""
        if not self.has_adapter:
            return self.state_dict()
        return {name: p for name, p in self.named_parameters() if ".lora_" in name or name.startswith("critic.")}

    def load_checkpoint_state(self, tensors: Any) -> None:
        if not self.has_adapter:
            return super().load_checkpoint_state(tensors)
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].dtype))

    @classmethod
    def from_checkpoint_config(cls, tokenizer: ActionTokenizer, config: dict[str, Any]) -> OpenVLAPolicy:
        policy = cls._from_finetuning_config(config)
        if tokenizer.stats is not None and policy.tokenizer.stats is not None and not (
                np.allclose(tokenizer.stats.q01, policy.tokenizer.stats.q01)
                and np.allclose(tokenizer.stats.q99, policy.tokenizer.stats.q99)):
            raise ValueError(f"the checkpoint's action statistics differ from the base's {config['unnorm_key']!r} "
                             "statistics: its tokens would mean other actions")
        return policy

    @classmethod
    def _from_finetuning_config(cls, config: dict[str, Any], torch_dtype: torch.dtype | None = None,
                                device: str | torch.device = "cpu") -> OpenVLAPolicy:
        """The base (from its checkpoint, or random with the recorded seed), then the recorded adapters and
        value head, empty until the checkpoint's tensors fill them."""
        options = {"resize": config.get("resize", "pil"), "greedy_vocabulary": config.get("greedy_vocabulary", "full"),
                   "torch_dtype": torch_dtype, "device": device}
        saved = OpenVLAConfig.from_dict(config["config"])
        base = config.get("base") or {}
        if base.get("kind") == "checkpoint":
            policy = cls.from_pretrained(base["name_or_path"], config["unnorm_key"], revision=base.get("revision"),
                                         **options)
            ours, theirs = policy.config.to_dict(), saved.to_dict()
            differ = sorted(k for k in set(ours) | set(theirs)
                            if k not in ("norm_stats", "default_unnorm_key") and ours.get(k) != theirs.get(k))
            if differ:
                raise ValueError(f"the adapters were trained on a base whose architecture differs from "
                                 f"{base['name_or_path']} (in {differ[:5]}); point the checkpoint at its own base")
        elif base.get("kind") == "random":
            policy = cls(saved, processing.standin_tokenizer(), config["unnorm_key"], seed=int(base["seed"]), **options)
        elif base.get("kind") == "merged":  # a warmed-up pi0 (its own fine-tuning checkpoint) with its adapters merged
            policy = cls.from_pretrained(base["name_or_path"], config["unnorm_key"], **options)
            policy.merge_adapters()
            policy.base_source = dict(base)
        else:
            raise ValueError(f"the checkpoint does not say where its base weights come from (base={base!r})")
        if config.get("lora"):
            policy.add_lora(**config["lora"])
        if config.get("value_head"):
            policy.with_value_head(0)
        return policy

    # ------------------------------------------------------------------ inputs

    @property
    def device(self) -> torch.device:
        return next(self.vision_backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_backbone.parameters()).dtype

    def llm(self) -> nn.Module:
        """The ``LlamaForCausalLM`` (inside the peft wrapper once LoRA is added)."""
        return self.language_model.get_base_model() if _is_peft(self.language_model) else self.language_model

    def pixel_values(self, obs: ObsBatch) -> torch.Tensor:
        if obs.image is None:
            raise ValueError("OpenVLAPolicy needs ObsBatch.image (uint8 (B, H, W, 3)); the batch has none")
        # uint8 crosses to the device (8x less than six float channels); normalisation happens there.
        images = obs.image.to(self.device)
        pixels = processing.pixel_values(images, self.config.towers(), self.config.image_size, self.resize)
        return pixels.to(self.dtype)

    def prefix(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds (B, P, H) and attention mask (B, P) of [BOS, patches, prompt tokens after BOS]."""
        prompts = processing.encode_prompts(self.text_tokenizer, obs.instruction, self.config.prompt_suffix_token_id)
        vocab = int(self.config.text["vocab_size"])
        bad = [(i, t) for i, ids in enumerate(prompts) for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"the instruction tokenizer produced id {bad[0][1]} (row {bad[0][0]}) outside the "
                             f"model's vocabulary of {vocab}; it does not belong to this checkpoint")
        text, text_mask = processing.left_pad([ids[1:] for ids in prompts], int(self.config.pad_token_id))
        bos = torch.tensor([[ids[0]] for ids in prompts])
        embed = self.llm().get_input_embeddings()
        patches = self.projector(self.vision_backbone(self.pixel_values(obs)))
        embeds = torch.cat([embed(bos.to(self.device)), patches, embed(text.to(self.device))], dim=1)
        ones = torch.ones((len(prompts), 1 + patches.shape[1]), dtype=torch.long)
        return embeds, torch.cat([ones, text_mask], dim=1).to(self.device)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count 0..N-1; padding repeats a position

    def _check_tokens(self, obs: ObsBatch, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("OpenVLAPolicy.action_logits needs the action tokens (B, D) to teacher-force on")
        if tokens.shape != (len(obs), self.action_dim) or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids of shape {(len(obs), self.action_dim)}, "
                             f"got {tokens.dtype} {tuple(tokens.shape)}")
        vocab = int(self.config.text["vocab_size"])
        if bool(((tokens < 0) | (tokens >= vocab)).any()):
            raise ValueError(f"tokens must lie in [0, {vocab}), got min {int(tokens.min())} max {int(tokens.max())}")
        return tokens.to(self.device, torch.long)

    # ------------------------------------------------------------------ the policy interface

    def action_logits(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, V) logits over the full padded vocabulary; row d predicts action token d from the
        prompt and tokens < d. One forward pass over the prompt plus the first D-1 tokens."""
        tokens = self._check_tokens(obs, tokens)
        embeds, mask = self.prefix(obs)
        dim = self.action_dim
        if dim > 1:
            embeds = torch.cat([embeds, self.llm().get_input_embeddings()(tokens[:, :-1])], dim=1)
            mask = torch.cat([mask, torch.ones_like(tokens[:, :-1])], dim=1)
        logits, _ = self._lm_call(self.language_model, inputs_embeds=embeds, attention_mask=mask,
                                  position_ids=self._positions(mask), use_cache=False, keep=dim)
        return logits[:, -dim:]

    @torch.no_grad()
    def decode(self, obs: ObsBatch, choose: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive decoding with the KV cache: one pass over the prompt, then one token per step.
        ``choose`` maps the (B, V) float32 logits of a step to the (B,) token ids fed back. Returns the
        tokens (B, D) as chosen and the logits (B, D, V) each step saw."""
        embeds, mask = self.prefix(obs)
        logits, cache = self._lm_call(self.language_model, inputs_embeds=embeds, attention_mask=mask,
                                      position_ids=self._positions(mask), use_cache=True, keep=1)
        tokens, steps = [], []
        for d in range(self.action_dim):
            steps.append(logits[:, -1])
            tokens.append(choose(logits[:, -1].float()))
            if d + 1 < self.action_dim:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                logits, cache = self._lm_call(
                    self.language_model, input_ids=tokens[-1][:, None], attention_mask=mask,
                    position_ids=self._positions(mask)[:, -1:], cache=cache, use_cache=True, keep=1,
                )
        return torch.stack(tokens, dim=1), torch.stack(steps, dim=1)

    def _decode_tokens(self, obs: ObsBatch, greedy: bool, temperature: float,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        support = self.action_support

        def choose(logits: torch.Tensor) -> torch.Tensor:
            if greedy and self.greedy_vocabulary == "full":
                return logits.argmax(-1)  # OpenVLA's predict_action: argmax over every column
            sliced = logits[:, support.start : support.stop]
            if greedy:
                return sliced.argmax(-1) + support.start
            probs = torch.softmax(sliced / temperature, dim=-1)
            where = generator.device if generator is not None else probs.device
            draw = torch.multinomial(probs.to(where), 1, generator=generator).squeeze(-1)
            return draw.to(logits.device) + support.start

        tokens, steps = self.decode(obs, choose)
        # Out-of-slice greedy ids become the slice end OpenVLA's decoder clips them to (same action).
        return tokens.clamp(support.start, support.stop - 1), steps

    def log_probs(self, obs: ObsBatch, tokens: torch.Tensor) -> torch.Tensor:
        """As ``Policy.log_probs``; ``tokens`` may live on any device (rollout buffers keep them on the CPU)."""
        return super().log_probs(obs, tokens.to(self.device))

    # ------------------------------------------------------------------ LoRA and pi0

    @property
    def has_adapter(self) -> bool:
        return _is_peft(self.language_model)

    def add_lora(
        self,
        rank: int = 32,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: str | Sequence[str] = "all-linear",
        include_projector: bool = False,
    ) -> list[nn.Parameter]:
        """Wrap the language model (and the projector if asked) with peft LoRA and freeze everything else.

        ``alpha`` defaults to min(rank, 16) and ``target_modules`` to every linear layer but the LM
        head, as OpenVLA's fine-tuning script does. Returns the trainable parameters.
        """
        from peft import LoraConfig, get_peft_model

        if self.has_adapter:
            raise RuntimeError("this policy already has a LoRA adapter")
        if rank < 1 or dropout < 0 or dropout >= 1:
            raise ValueError(f"need rank >= 1 and 0 <= dropout < 1, got rank={rank}, dropout={dropout}")
        alpha = float(min(rank, 16) if alpha is None else alpha)
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.lora_settings = {"rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": targets,
                              "include_projector": include_projector}
        self.requires_grad_(False)
        if self.critic is not None:
            self.critic.requires_grad_(True)
        self.language_model = get_peft_model(
            self.language_model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        )
        if include_projector:
            self.projector = get_peft_model(
                self.projector, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                           target_modules=["fc1", "fc2", "fc3"])
            )
        return self.trainable_parameters()

    def mark_reference(self) -> None:
        """With adapters pi0 is the model with them disabled (``reference``): nothing is copied."""
        if not self.has_adapter:
            super().mark_reference()

    @contextlib.contextmanager
    def reference(self) -> Iterator[OpenVLAPolicy]:
        """pi0: the adapters disabled (peft ``disable_adapter``), gradients off. Without an adapter this
        falls back to the frozen copy of ``mark_reference()``."""
        if not self.has_adapter:
            with super().reference() as policy:
                yield policy
            return
        moved = [n for n, p in self.named_parameters()
                 if p.requires_grad and ".lora_" not in n and not n.startswith("critic.")]
        if moved:
            raise RuntimeError(f"reference() disables the LoRA adapter, which gives pi0 only while the base "
                               f"weights stay frozen; these require grad: {moved[:5]}")
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            for module in (self.language_model, self.projector):
                if _is_peft(module):
                    stack.enter_context(module.disable_adapter())
            yield self

    # ------------------------------------------------------------------ saving

    def checkpoint_tensors(self, merged: bool = True) -> Iterator[tuple[str, tuple[int, ...], torch.dtype, Any]]:
        """``(name, shape, dtype, make)`` for every tensor in OpenVLA's layout. With LoRA, ``merged``
        folds each adapter into its base weight (W + scale B A); otherwise the base weights are saved."""
        from vla_cl.policies.openvla.lora import canonical_tensors

        for prefix in ("vision_backbone", "projector", "language_model"):
            yield from canonical_tensors(getattr(self, prefix), prefix, merged)

    def save_pretrained(self, folder: str | Path, metadata: dict[str, Any] | None = None, *,
                        merged: bool = False, max_shard_size: int | str = "5GB") -> Path:
        """With LoRA adapters and ``merged=False`` (what a training run saves): a fine-tuning checkpoint of a
        few files (this library's format: the adapters, the value head, the action statistics and a reference
        to the base checkpoint; ``load_policy`` rebuilds the policy from it). Otherwise a complete checkpoint in
        OpenVLA's layout (config.json with the statistics and this policy's ``default_unnorm_key``, safetensors
        shards + index, tokenizer), adapters merged into the weights; ``metadata`` is then not stored."""
        if self.has_adapter and not merged:
            from vla_cl.policies.checkpoint import write_checkpoint

            return write_checkpoint(self, folder, metadata)
        folder = Path(folder)
        ckpt.save_tensors(folder, self.checkpoint_tensors(True), max_shard_size)
        ckpt.write_config(folder, self.config_dict()["config"], self.dtype)
        if self.text_tokenizer is not None and hasattr(self.text_tokenizer, "save_pretrained"):
            self.text_tokenizer.save_pretrained(str(folder))
        return folder

    def save_adapter(self, folder: str | Path) -> Path:
        from vla_cl.policies.openvla.lora import save_adapters

        return save_adapters(self, Path(folder))

    def load_adapter(self, folder: str | Path, is_trainable: bool = False) -> None:
        from vla_cl.policies.openvla.lora import load_adapters

        load_adapters(self, Path(folder), is_trainable)


def _is_peft(module: nn.Module) -> bool:
    peft = sys.modules.get("peft")  # nothing can be wrapped unless peft was imported
    return peft is not None and isinstance(module, peft.PeftModel)
