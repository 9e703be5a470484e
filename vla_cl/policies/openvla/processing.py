"""OpenVLA's inputs: the prompt, its tokenisation, and the image preprocessing.

Prompt: ``"In: What action should the robot take to {instruction.lower()}?\\nOut:"``, tokenised with
the checkpoint's Llama-2 tokenizer (BOS first) and followed by token 29871 (Llama-2's bare "▁")
unless it is already last: OpenVLA's training prompts ended "Out: " and the space became that token,
so ``predict_action`` appends it. Instructions are lower-cased as in OpenVLA's training data.

Images: OpenVLA-7B's processor (``image_resize_strategy="resize-naive"``) resizes the PIL image to
224x224 with PIL's bicubic filter, converts to [0, 1], and normalises twice, ImageNet mean/std for
DINOv2 and 0.5/0.5 for SigLIP, stacked as 6 channels. ``resize="pil"`` does the same (exact, on CPU);
``resize="torch"`` runs torch's antialiased bicubic (Pillow's filter, a = -0.5) on the tensor's device,
one axis at a time with Pillow's rounding in between: measured against Pillow, under 0.5 % of the
values differ, by at most 2/255 (Pillow computes its weights in fixed point).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_cl.policies.openvla.config import VisionTowerConfig

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
RESIZE_BACKENDS = ("pil", "torch")


def build_prompt(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


def encode_prompts(text_tokenizer: Any, instructions: Sequence[str], suffix_token_id: int) -> list[list[int]]:
    """Token ids of each prompt: BOS, the prompt, and ``suffix_token_id`` if the prompt does not end in it."""
    bos = text_tokenizer.bos_token_id
    if bos is None:
        raise ValueError("the instruction tokenizer has no BOS token; OpenVLA's prompt starts with BOS")
    out = []
    for instruction in instructions:
        ids = list(text_tokenizer(build_prompt(instruction), add_special_tokens=True)["input_ids"])
        if not ids or ids[0] != bos:
            ids = [bos] + ids
        if ids[-1] != suffix_token_id:
            ids.append(suffix_token_id)
        out.append(ids)
    return out


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to the longest sequence: (ids, mask), both (B, L) int64. Left padding lines up the
    prompts' ends, so every row's action tokens sit in the same final columns."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, length - len(seq) :] = 1
    return ids, mask


def resize_images(images: torch.Tensor, size: int, backend: str = "pil") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, size, size, 3) with a bicubic filter (see the module docstring)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize backend must be one of {RESIZE_BACKENDS}, got {backend!r}")
    if tuple(images.shape[1:3]) == (size, size):
        return images
    if backend == "pil":
        from PIL import Image

        frames = [
            np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))
            for frame in images.cpu().numpy()
        ]
        return torch.from_numpy(np.stack(frames)).to(images.device)
    # Pillow resamples width first, then height, rounding to uint8 in between; doing the same keeps
    # the two backends apart only by Pillow's fixed-point weights.
    pixels = images.permute(0, 3, 1, 2).float()
    for target in ((pixels.shape[2], size), (size, size)):
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


def pixel_values(images: torch.Tensor, towers: Sequence[VisionTowerConfig], size: int, backend: str = "pil") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3 * len(towers), size, size), each tower's normalisation stacked."""
    resized = resize_images(images, size, backend).permute(0, 3, 1, 2).float() / 255.0
    stacked = []
    for tower in towers:
        mean = torch.tensor(tower.mean, device=resized.device).view(1, 3, 1, 1)
        std = torch.tensor(tower.std, device=resized.device).view(1, 3, 1, 1)
        stacked.append((resized - mean) / std)
    return torch.cat(stacked, dim=1)


def load_text_tokenizer(folder: str | Path) -> Any:
    """The instruction tokenizer saved with a checkpoint (tokenizer.json / tokenizer.model)."""
    folder = Path(folder)
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ValueError(
            f"{folder} has no tokenizer files (tokenizer.json or tokenizer.model); OpenVLA checkpoints ship "
            "the Llama-2 tokenizer beside the weights: copy it there, or pass text_tokenizer="
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def standin_tokenizer(vocab_size: int = 32000, suffix_token: str = "▁") -> Any:
    """A character-level tokenizer for randomly initialised models (tests, benchmarks), offline.

    Ids: 0 <unk>, 1 <s> (BOS, added in front as Llama's tokenizer does), 2 </s>, 3 ``suffix_token``,
    then printable ASCII. It only stands in where no real tokenizer exists; it keeps ids well below the
    action slice of any vocabulary of at least 256 + 104 ids.
    """
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", suffix_token]
    symbols = specials + sorted(set(string.printable) - set(specials))
    if len(symbols) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the stand-in alphabet ({len(symbols)})")
    tokenizer = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
