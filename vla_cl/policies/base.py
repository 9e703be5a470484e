"""The one interface every policy offers: distributions over discretised action tokens.

A policy maps a batch of observations (instruction, and state and/or image) to logits over action
tokens, shape (B, D, V): position d is conditioned on the observation and, for autoregressive
policies, on the action tokens before d (teacher forcing on the tokens given). Everything else the
updaters and evaluations need (sampling, greedy decoding, log-probs, entropy, continuous actions,
the reference policy pi0, checkpoints) is built here on top of two abstract methods, so that a tiny
CPU policy and OpenVLA-7B go through exactly the same code.

Checkpoints: ``save_pretrained`` / ``from_pretrained`` default to the generic format of
``vla_cl.policies.checkpoint`` (config.json + model.safetensors), which rebuilds a policy as
``cls(tokenizer=..., **config_dict())``; a policy with a format of its own (OpenVLA's Hugging Face
layout) overrides both, and ``vla_cl.policies.load_policy`` dispatches to the right class.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vla_cl.kl import action_log_probs, entropy
from vla_cl.tokenizer import ActionTokenizer


@dataclasses.dataclass
class ObsBatch:
    """A batch of observations in the VLA convention (see ``vla_cl.envs``)."""

    instruction: list[str]
    state: torch.Tensor | None = None  # (B, S) float32
    image: torch.Tensor | None = None  # (B, H, W, 3) uint8

    def __post_init__(self) -> None:
        n = len(self.instruction)
        for name in ("state", "image"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"ObsBatch.{name} has batch size {value.shape[0]}, instruction has {n}")
        if self.state is not None and not bool(torch.isfinite(self.state).all()):
            raise ValueError("ObsBatch.state contains NaN or inf")
        if self.image is not None and self.image.dtype != torch.uint8:
            raise ValueError(f"ObsBatch.image must be uint8 (B, H, W, 3), got {self.image.dtype}")

    def __len__(self) -> int:
        return len(self.instruction)

    @classmethod
    def from_observations(cls, observations: Sequence[Mapping[str, Any]]) -> ObsBatch:
        """Stack env observations (dicts with ``instruction`` and ``state``/``image``) into a batch."""
        if not observations:
            raise ValueError("from_observations needs at least one observation")
        state = image = None
        if "state" in observations[0]:
            state = torch.as_tensor(np.stack([np.asarray(o["state"], np.float32) for o in observations]))
        if "image" in observations[0]:
            image = torch.as_tensor(np.stack([np.asarray(o["image"], np.uint8) for o in observations]))
        return cls([str(o["instruction"]) for o in observations], state, image)

    def select(self, index: Any) -> ObsBatch:
        """Rows ``index`` (a slice, list or tensor of indices) of the batch."""
        rows = torch.arange(len(self))[index]
        rows = rows.reshape(-1).tolist()
        pick = lambda t: None if t is None else t[rows]
        return ObsBatch([self.instruction[i] for i in rows], pick(self.state), pick(self.image))

    def to(self, device: torch.device | str) -> ObsBatch:
        move = lambda t: None if t is None else t.to(device)
        return ObsBatch(list(self.instruction), move(self.state), move(self.image))


def choose_tokens(
    logits: torch.Tensor, greedy: bool, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices into the last dimension of ``logits`` (..., n): the argmax, or one draw from
    softmax(logits / temperature) per row with ``generator``. Shared by every decoding loop so that
    cached and uncached decoders sample identically.

    Draws invert the cumulative distribution with one uniform number per row (the first index whose
    cumulative probability exceeds u * total): exactly a sample of the tempered softmax, and on a CPU
    several times cheaper than ``torch.multinomial`` on the handful of rows an env step decodes."""
    logits = logits.float()
    if greedy:
        return logits.argmax(-1)
    device = generator.device if generator is not None else logits.device  # draws on the generator's device
    cdf = torch.softmax(logits.to(device) / temperature, dim=-1).cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), device=device, generator=generator) * cdf[..., -1:]
    index = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return index.to(logits.device)


@dataclasses.dataclass
class ActionSample:
    """What ``Policy.generate`` returns for a batch."""

    tokens: torch.Tensor  # (B, D) vocabulary ids of the action tokens
    logits: torch.Tensor  # (B, D, V) the logits each position was chosen from (the decoding pass's own)
    support: range  # the action tokens' ids, which log_probs normalise over
    normalized: np.ndarray  # (B, D) actions in [-1, 1] (bin centres)
    actions: np.ndarray  # (B, D) actions in the environment's units (un-normalised with the policy's stats)

    @functools.cached_property
    def log_probs(self) -> torch.Tensor:
        """(B, D) log pi(token_d | obs, tokens_<d) over the action support, from the decoding pass's logits
        (computed on first use: acting in an env never needs them)."""
        return action_log_probs(self.logits, self.tokens, self.support)


class Policy(nn.Module, abc.ABC):
    """Base class of every policy. Subclasses implement ``action_logits`` and ``config_dict``.

    Class attributes: ``name`` (registry name), ``autoregressive`` (position d depends on tokens < d).
    Instance attributes: ``tokenizer`` (an ActionTokenizer carrying the action statistics) and
    ``action_dim`` (D).
    """

    name: ClassVar[str] = ""
    autoregressive: ClassVar[bool] = False

    def __init__(self, tokenizer: ActionTokenizer, action_dim: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.action_dim = int(action_dim)
        self._reference_params: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ what a policy must provide

    @abc.abstractmethod
    def action_logits(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, D, V) over the policy's vocabulary. ``tokens`` (B, D) are the action tokens to
        teacher-force on; autoregressive policies need them (position d sees tokens < d), others ignore them."""

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments (without the tokenizer), for checkpoints."""

    # ------------------------------------------------------------------ what it observes

    @property
    def state_size(self) -> int:
        """Length of the state vector the policy reads (0: it reads no state)."""
        return int(getattr(self, "state_dim", 0) or 0)

    @property
    def image_size(self) -> int | None:
        """Side of the square images the policy reads (None: it reads no image). Policies whose vision
        encoder is ``self.vision`` report its ``image_size``."""
        vision = getattr(self, "vision", None)
        return None if vision is None else int(vision.image_size)

    @property
    def observation_keys(self) -> frozenset[str]:
        """The observation entries the policy reads: ``state`` and/or ``image`` (besides the instruction)."""
        return frozenset(k for k, on in (("state", self.state_size > 0), ("image", self.image_size is not None)) if on)

    # ------------------------------------------------------------------ optional capabilities

    @property
    def has_value_head(self) -> bool:
        """Policies keep their value head (if any) in a submodule named ``critic``."""
        return getattr(self, "critic", None) is not None

    def value(self, obs: ObsBatch) -> torch.Tensor:
        """State value V(obs), shape (B,), for PPO. Only policies with a value head provide it."""
        raise NotImplementedError(f"policy {self.name!r} has no value head; choose one with value_head=True")

    def with_value_head(self, seed: int) -> Policy:
        """This policy with a freshly initialised value head (for PPO): by default the same class rebuilt
        from ``config_dict()`` with ``value_head=True`` and every other weight copied. A policy that cannot
        grow one raises ValueError naming it."""
        config = self.config_dict()
        if "value_head" not in config:
            raise ValueError(f"policy {self.name!r} cannot be given a value head, which PPO needs; "
                             "choose an updater without a critic (reinforce, grpo, sft, ...)")
        torch.manual_seed(seed)
        grown = type(self)(tokenizer=self.tokenizer, **{**config, "value_head": True})
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        added = {name for name, _ in grown.named_parameters()} - {name for name, _ in self.named_parameters()}
        if unexpected or set(missing) != added:
            raise ValueError(f"adding a value head changed more than the head: missing {missing}, "
                             f"unexpected {unexpected}")
        return grown

    def representation_modules(self) -> list[str]:
        """Names of the modules whose outputs are this policy's internal representations (the activation
        and CKA predictors compare them with pi0's): by default every activation function outside the value
        head."""
        kinds = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh)
        return [name for name, module in self.named_modules()
                if isinstance(module, kinds) and not name.startswith("critic")]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def prepare_finetuning(self, **options: Any) -> None:
        """Get ready to be fine-tuned (options from ``vla-cl train``, e.g. ``lora_rank``). Nothing for
        policies trained whole; adapter-based policies attach their adapters here (``openvla``)."""

    # ------------------------------------------------------------------ building one for a task

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """Constructor arguments of a seconds-to-train instance, for tests and smoke runs."""
        return {}

    @classmethod
    def for_task(cls, *, state_dim: int, action_stats: Mapping[str, Any], instructions: Sequence[str],
                 preset: str, value_head: bool, seed: int) -> Policy:
        """A freshly initialised policy for a task (its state size, instructions and action statistics),
        at size ``preset`` (``tiny`` or ``default``). Policies that only make sense from a checkpoint raise
        ValueError saying to pass one (``vla-cl train init=...``)."""
        raise ValueError(f"policy {cls.name!r} is not built from scratch: pass init=CHECKPOINT (a folder or a "
                         "hub id)")

    @classmethod
    def fresh_observations(cls, preset: str) -> tuple[frozenset[str], int | None]:
        """What a policy ``for_task`` would build at ``preset`` reads (``state``/``image``) and its image
        side, known without building it (``vla-cl train`` checks its demonstrations and envs first). By
        default read off the constructor: a ``state_dim`` argument means the state (``for_task`` passes the
        task's), an ``image_size`` argument an image of that side."""
        import inspect

        parameters = inspect.signature(cls.__init__).parameters
        config = cls.tiny_config() if preset == "tiny" else {}
        reads = {name for name, arg in (("state", "state_dim"), ("image", "image_size")) if arg in parameters}
        side = config.get("image_size", parameters["image_size"].default) if "image" in reads else None
        return frozenset(reads), side

    @classmethod
    def checkpoint_observations(cls, saved: Mapping[str, Any]) -> tuple[frozenset[str], int | None, int]:
        """(observations read, image side, action dimension) of a checkpoint of this policy, from its
        ``config.json`` alone (generic format: the recorded ``config_dict()``)."""
        config = saved.get("config") or {}
        reads = frozenset(k for k, on in (("state", bool(config.get("state_dim"))),
                                          ("image", config.get("image_size") is not None)) if on)
        return reads, config.get("image_size"), int(saved.get("action_dim", 7))

    @classmethod
    def load_options(cls, task: Any, device: str, folder: str | Path | None = None) -> dict[str, Any]:
        """Options for ``from_pretrained`` when the checkpoint ``folder`` is loaded to fine-tune on ``task`` (a
        ``vla_cl.envs.TaskSpec``, or None: to act as saved) on ``device``: nothing for the small policies (they
        load on the CPU and move); OpenVLA picks the task's action statistics for a checkpoint in its own layout
        (one of this library's fine-tuning checkpoints acts with the statistics it was trained with) and loads
        straight onto a GPU in bf16."""
        return {}

    def add_instruction(self, text: str, init_from: str | None = None) -> list[str]:
        """Teach the policy a new task's instruction; returns what was added. Policies that read text
        through a real tokenizer need nothing (the default); word-vocabulary policies grow theirs."""
        return []

    # ------------------------------------------------------------------ pi0

    def mark_reference(self) -> None:
        """Remember the current weights as pi0 (a frozen copy) for ``reference()``.

        Call it once the policy is pi0: after any change of architecture (e.g. a new instruction's
        words) and before the first fine-tuning step. Policies with adapters override ``reference()``
        to disable the adapter instead and never copy.
        """
        frozen: dict[int, torch.Tensor] = {}  # tied parameters share one copy
        reference = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            if id(param) not in frozen:
                frozen[id(param)] = param.detach().clone()
            reference[name] = frozen[id(param)]
        self._reference_params = reference

    @contextlib.contextmanager
    def reference(self) -> Iterator[Policy]:
        """A context in which this same object computes pi0 (gradients off).

        The frozen tensors are swapped in for the parameter objects and the originals put back after;
        no parameter is written in place, so a loss built from pi's forward before the context can
        still be backpropagated after it (an in-place copy would bump the parameters' versions and
        break that graph), and no weights are copied per call.
        """
        if self._reference_params is None:
            raise RuntimeError("no reference policy: call mark_reference() before fine-tuning")
        reference = self._reference_params
        slots = list(self.named_parameters(remove_duplicate=False))
        changed = [name for name, p in slots if name not in reference or reference[name].shape != p.shape]
        changed += sorted(set(reference) - {name for name, _ in slots})
        if changed:
            raise RuntimeError(
                f"the parameters changed since mark_reference() (first few: {changed[:5]}); call "
                "mark_reference() again after changing the architecture (e.g. after add_instruction)"
            )
        originals = []
        for name, param in slots:
            owner, _, leaf = name.rpartition(".")
            module = self.get_submodule(owner)
            originals.append((module, leaf, module._parameters[leaf]))
            module._parameters[leaf] = reference[name].to(param)  # no-op unless the policy was moved
        try:
            with torch.no_grad():
                yield self
        finally:
            for module, leaf, param in originals:
                module._parameters[leaf] = param

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint folder that ``vla_cl.policies.load_policy`` reads back (generic format,
        written atomically; ``metadata`` is any JSON-serialisable mapping stored beside the config)."""
        from vla_cl.policies.checkpoint import write_checkpoint

        return write_checkpoint(self, folder, metadata)

    # What the generic checkpoint holds: by default every tensor of ``state_dict()`` and the constructor
    # arguments; an adapter-based policy keeps only what fine-tuning changes and a reference to its base.

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint of this policy stores."""
        return self.state_dict()

    def load_checkpoint_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy ``tensors`` (``checkpoint_state()``'s names and shapes, checked by the reader) into this policy."""
        self.load_state_dict(dict(tensors), strict=True)

    @classmethod
    def from_checkpoint_config(cls, tokenizer: ActionTokenizer, config: Mapping[str, Any]) -> Policy:
        """The policy a checkpoint's recorded ``config_dict()`` describes, before its tensors are loaded."""
        return cls(tokenizer=tokenizer, **config)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Policy:
        """Read a checkpoint written by ``save_pretrained`` (validated; never unpickles)."""
        from vla_cl.policies.checkpoint import read_checkpoint

        return read_checkpoint(folder, cls)

    # ------------------------------------------------------------------ built on action_logits

    @property
    def action_support(self) -> range:
        return self.tokenizer.bin_ids

    def action_values(self) -> torch.Tensor:
        """The physical value each support column stands for at each action position, (D, K) float64: the bin
        centre each id decodes to, un-normalised with the policy's action statistics (its own units, the ones its
        tokenizer encodes; normalised [-1, 1] where it has none). What the order-aware predictors measure in."""
        normalized = self.tokenizer.decode(np.asarray(self.action_support))  # (K,)
        tiled = np.repeat(normalized[:, None], self.action_dim, axis=1)  # (K, D)
        physical = self.tokenizer.unnormalize(tiled) if self.tokenizer.stats is not None else tiled
        return torch.as_tensor(np.ascontiguousarray(physical.T), dtype=torch.float64)

    def log_probs(self, obs: ObsBatch, tokens: torch.Tensor) -> torch.Tensor:
        """log pi(tokens_d | obs, tokens_<d), shape (B, D), normalised over the action tokens."""
        return action_log_probs(self.action_logits(obs, tokens), tokens, self.action_support)

    def entropy(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position entropy (B, D) of the action-token distribution (teacher-forced on ``tokens``);
        ``vla_cl.kl.entropy``, so a token given no mass (-inf logit) counts 0 log 0 = 0."""
        return entropy(self.action_logits(obs, tokens), self.action_support)

    @torch.no_grad()
    def generate(
        self,
        obs: ObsBatch,
        greedy: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """Sample (or take the argmax of) action tokens, restricted to the action support.

        The log-probabilities come from the decoding pass itself (the policy's distribution at
        temperature 1, as ``log_probs`` gives them teacher-forced): no second forward per step.
        Autoregressive policies decode position by position; subclasses with a KV cache override
        ``_decode_tokens`` to avoid recomputing the prefix.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
        tokens, step_logits = self._decode_tokens(obs, greedy, temperature, generator)
        # the decoder chose these ids from the action slice, and bin centres are finite: no validation
        normalized = self.tokenizer.decode(tokens.cpu().numpy(), check=False)
        actions = self.tokenizer.unnormalize(normalized, check=False) if self.tokenizer.stats is not None else normalized
        return ActionSample(tokens, step_logits, self.action_support, normalized,
                            np.asarray(self.env_actions(actions), np.float32))

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """The un-normalised decoded actions (B, D) in the environment's convention. The identity, unless
        the checkpoint's action statistics come from a dataset whose actions need converting (OpenVLA with
        ``bridge_orig``: SimplerEnv's post-processing)."""
        return actions

    def policy_actions(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`env_actions`: actions (N, D) in the environment's convention (demonstrations)
        as the policy's own un-normalised actions, the ones its tokenizer encodes."""
        return actions

    def _decode_tokens(
        self, obs: ObsBatch, greedy: bool, temperature: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen token ids (B, D) and the logits (B, D, V) each position was chosen from."""
        support = self.action_support
        tokens = torch.full((len(obs), self.action_dim), support.start, dtype=torch.long)
        if not self.autoregressive:  # one forward: every position depends on the observation only
            logits = self.action_logits(obs, tokens)
            tokens = choose_tokens(logits[..., support.start : support.stop], greedy, temperature, generator)
            return tokens + support.start, logits
        steps = []
        for d in range(self.action_dim):
            steps.append(self.action_logits(obs, tokens)[:, d])
            tokens[:, d] = choose_tokens(steps[-1][:, support.start : support.stop], greedy, temperature,
                                         generator) + support.start
        return tokens, torch.stack(steps, dim=1)

    def act(self, obs: ObsBatch, greedy: bool = False, **kwargs: Any) -> np.ndarray:
        """Continuous actions (B, D) for the environment."""
        return self.generate(obs, greedy=greedy, **kwargs).actions
