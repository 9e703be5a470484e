"""The instruction encoder of the CPU-scale policies: a small word vocabulary with learned embeddings.

The CPU policies see a handful of task instructions ("pick up the red cube and move it to the green
target", ...), so a word-level vocabulary built from those instructions is all the language they need,
and it goes into the checkpoint's config, so a saved policy reads its instructions exactly as in training.

Words: lower-cased runs of letters and digits (``split_words``); punctuation separates words and is
dropped. The vocabulary is ``["<pad>", "<unk>"]`` followed by the sorted distinct words; a word not in
it maps to ``<unk>`` (whose embedding is never trained unless such words occur in training), and an
instruction without any word reads as a single ``<unk>``.

``InstructionEncoder`` gives per-word embeddings with a padding mask (``word_embeddings``, for the
vision-language policy's transformer) or their mean over the instruction's words (``forward``, for
the state policy's MLP).

A new task joins with ``add_instruction(text, init_from=prior)``: its unseen words are appended, with
embeddings chosen so that the new instruction's mean embedding equals the prior instruction's. A
mean-pooling policy then starts the new task acting exactly as on the prior one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK)
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"an instruction must be a string, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def build_vocabulary(instructions: Sequence[str]) -> list[str]:
    """``[<pad>, <unk>]`` + the sorted distinct words of ``instructions``."""
    if isinstance(instructions, str):
        raise TypeError("instructions must be a list of strings, not one string")
    words = {word for text in instructions for word in split_words(text)}
    return list(SPECIALS) + sorted(words)


class InstructionEncoder(nn.Module):
    """Word ids -> learned embeddings (dim ``dim``), per word or mean-pooled."""

    def __init__(self, vocabulary: Sequence[str], dim: int):
        super().__init__()
        vocabulary = list(vocabulary)
        if tuple(vocabulary[:2]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got {vocabulary[:2]}")
        bad = [w for w in vocabulary[2:] if not isinstance(w, str) or _WORD.fullmatch(w) is None]
        if bad:
            raise ValueError(f"vocabulary words must be lower-case letters/digits, got {bad[:5]}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has repeated words")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.vocabulary = vocabulary
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.embedding = nn.Embedding(len(vocabulary), dim, padding_idx=0)
        self._cache: dict[str, list[int]] = {}  # instruction -> word ids (cleared when words are added)
        self._means: dict[str, torch.Tensor] = {}  # instruction -> mean embedding, without gradients (forward)
        self._means_stamp: tuple | None = None

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def word_ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            unk = self.index[UNK]
            ids = self._cache[text] = [self.index.get(word, unk) for word in split_words(text)] or [unk]
        return ids

    def ids(
        self, instructions: Sequence[str], length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids (B, L) padded with <pad>, and the mask (B, L) of real words. ``length`` fixes L
        (so that positions do not depend on the batch); a longer instruction then raises ValueError."""
        # A batch holds a handful of distinct instructions repeated: encode each once, then gather rows.
        distinct = list(dict.fromkeys(instructions))
        rows = [self.word_ids(text) for text in distinct]
        longest = max((len(r) for r in rows), default=1)
        if length is not None and longest > length:
            text = next(t for t, r in zip(distinct, rows) if len(r) == longest)
            raise ValueError(
                f"instruction {text!r} has {longest} words; this policy reads at most {length} "
                "(build it with a larger max_words)"
            )
        width = longest if length is None else length
        table = torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long).reshape(-1, width)
        position = {text: i for i, text in enumerate(distinct)}
        ids = table[torch.tensor([position[text] for text in instructions], dtype=torch.long)]
        return ids, ids != self.index[PAD]

    def word_embeddings(
        self, instructions: Sequence[str], length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, dim) and the mask (B, L) of real words."""
        ids, mask = self.ids(instructions, length)
        return self.embedding(ids.to(self.embedding.weight.device)), mask.to(self.embedding.weight.device)

    def forward(self, instructions: Sequence[str]) -> torch.Tensor:
        """Mean word embedding (B, dim) of each instruction.

        Without gradients (acting in an env: one call per step) each distinct instruction's mean is kept
        until the embedding weights change (their version counter moves with every in-place update)."""
        if torch.is_grad_enabled():
            return self._mean(instructions)
        weight = self.embedding.weight
        stamp = (id(weight), weight._version, weight.device, weight.dtype)
        if self._means_stamp != stamp:
            self._means, self._means_stamp = {}, stamp
        missing = [text for text in dict.fromkeys(instructions) if text not in self._means]
        if missing:
            self._means.update(zip(missing, self._mean(missing)))
        return torch.stack([self._means[text] for text in instructions])

    def _mean(self, instructions: Sequence[str]) -> torch.Tensor:
        embeddings, mask = self.word_embeddings(instructions)
        weights = mask.to(embeddings.dtype).unsqueeze(-1)
        return (embeddings * weights).sum(1) / weights.sum(1)

    def add_instruction(self, text: str, init_from: str | None = None) -> list[str]:
        """Append ``text``'s unseen words to the vocabulary; returns them.

        With ``init_from``, the new words' embeddings are set so that ``forward([text])`` equals
        ``forward([init_from])`` (up to float rounding): with n words of which k are new occurrences
        and the known ones summing to S, each new word gets (n * target - S) / k. Without it they are
        drawn like fresh embeddings. The embedding parameter is replaced: build the optimizer (and
        mark the reference policy) after adding instructions.
        """
        words = split_words(text)
        new = list(dict.fromkeys(w for w in words if w not in self.index))
        if init_from is not None and not new:
            raise ValueError(
                f"every word of {text!r} is already in the vocabulary, so its embedding is fixed by "
                "the other instructions and cannot be initialised from another; reword it"
            )
        if not new:
            return []
        old = self.embedding.weight.detach()
        grown = nn.Embedding(len(self.vocabulary) + len(new), self.dim, padding_idx=0).to(
            old.device, old.dtype
        )
        with torch.no_grad():
            grown.weight[: len(old)] = old
            if init_from is not None:
                target = self.forward([init_from])[0]
                known = [self.index[w] for w in words if w in self.index]
                known_sum = old[known].sum(0) if known else torch.zeros_like(target)
                n_new = sum(1 for w in words if w not in self.index)
                grown.weight[len(old) :] = (len(words) * target - known_sum) / n_new
        self.vocabulary.extend(new)
        self._cache.clear()
        self.index.update({word: len(old) + i for i, word in enumerate(new)})
        self.embedding = grown
        return new
