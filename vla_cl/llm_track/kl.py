"""The token-level forward KL(pi0 || pi) of a language model on new-task prompts, measured and logged in training.

KL(pi0(.|x) || pi(.|x)) over whole responses y is, by the chain rule, the expectation under y ~ pi0 of the
sum over response positions t of the exact per-token KL(pi0(.|x, y_<t) || pi(.|x, y_<t)). So responses are
sampled once from pi0 (temperature 1, no top-k / top-p, and none of the model's own generation settings
such as a repetition penalty: pi0's own distribution, ``own_distribution``) and both models are
teacher-forced on them; per response:

* ``forward_kl`` (the chain-rule estimate, ``vla_cl.kl.sequence.action_token_kl`` over the full vocabulary):
  the exact per-token KLs summed over the response's tokens (up to and including its end-of-turn token);
* ``monte_carlo`` (``vla_cl.kl.sequence.monte_carlo_kl``): log pi0(y|x) - log pi(y|x).

Both are unbiased for the sequence KL; each is reported as a mean over responses with its standard error.
pi0 is the same model with its LoRA adapter disabled (``model.disable_adapter()``), so measuring never needs
a second copy of the weights. ``KLCallback`` measures on a fixed probe every few optimizer steps of a TRL
trainer and adds the numbers to the trainer's logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from vla_cl.kl.compare import output_predictors
from vla_cl.kl.sequence import KLEstimate, action_token_kl, log_ratio


@dataclasses.dataclass
class Responses:
    """Prompts (left-padded to one length P) followed by responses sampled from pi0 (right-padded to R)."""

    input_ids: torch.Tensor  # (n, P + R)
    attention_mask: torch.Tensor  # (n, P + R)
    prompt_length: int  # P
    response_mask: torch.Tensor  # (n, R) bool: the response's own tokens, through its end-of-turn token
    prompt_ids: list[str]  # the example each row answers

    @property
    def tokens(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]

    def texts(self, tokenizer: Any) -> list[str]:
        """Each response decoded, up to its end-of-turn token, without special tokens."""
        pad = tokenizer.pad_token_id
        return tokenizer.batch_decode(self.tokens.masked_fill(~self.response_mask, pad), skip_special_tokens=True)

    def rows(self, start: int, stop: int) -> Responses:
        return Responses(self.input_ids[start:stop], self.attention_mask[start:stop], self.prompt_length,
                         self.response_mask[start:stop], self.prompt_ids[start:stop])


def base_model(model: Any) -> contextlib.AbstractContextManager:
    """A context in which ``model`` is pi0: its adapter disabled (a model without one already is pi0)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


def encode_prompts(tokenizer: Any, examples: list[dict]) -> dict[str, torch.Tensor]:
    texts = [tokenizer.apply_chat_template(e["messages"], tokenize=False, add_generation_prompt=True) for e in examples]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def end_token_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured])
    unknown = tokenizer.unk_token_id
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != unknown)


@contextlib.contextmanager
def own_distribution(model: Any):
    """While it runs, ``model.generate`` samples from the model's own distribution: the model's
    ``generation_config`` (a hub model's repetition penalty, banned words, n-gram blocking, ...), which
    ``generate`` would otherwise apply to every setting not passed to it, is replaced by transformers'
    defaults, under which no logits processor but temperature, top-k and top-p runs."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


@torch.no_grad()
def generate_responses(model: Any, tokenizer: Any, examples: list[dict], samples_per_prompt: int,
                       max_new_tokens: int, seed: int, greedy: bool = False, base: bool = True,
                       batch_size: int = 32) -> Responses:
    """Responses to each example's prompt, sampled at temperature 1 (or greedy), from pi0 (``base``: the
    adapter disabled) or from the model as it is, from its own distribution (``own_distribution``)."""
    ends = end_token_ids(tokenizer, model)
    encoded = encode_prompts(tokenizer, [e for e in examples for _ in range(samples_per_prompt)])
    ids = [e["id"] for e in examples for _ in range(samples_per_prompt)]
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    outputs = []
    try:
        with base_model(model) if base else contextlib.nullcontext(), own_distribution(model):
            for start in range(0, len(ids), batch_size):
                chunk = slice(start, start + batch_size)
                outputs.append(model.generate(
                    input_ids=encoded["input_ids"][chunk], attention_mask=encoded["attention_mask"][chunk],
                    max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else 1.0,
                    top_k=None if greedy else 0, top_p=None if greedy else 1.0, eos_token_id=ends,
                    pad_token_id=tokenizer.pad_token_id)[:, encoded["input_ids"].shape[1]:])
    finally:
        model.train(was_training)
    width = max(o.shape[1] for o in outputs)
    pad = tokenizer.pad_token_id
    responses = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=pad) for o in outputs])
    return _with_mask(encoded, responses, ends, ids)


def _with_mask(encoded: dict, responses: torch.Tensor, ends: list[int], ids: list[str]) -> Responses:
    """Mark each response's tokens up to and including its first end token (the rest is padding)."""
    is_end = torch.isin(responses, torch.tensor(ends))
    ended_before = (is_end.long().cumsum(-1) - is_end.long()) > 0
    mask = ~ended_before
    if responses.shape[1] == 0 or not bool(mask[:, 0].all()):
        raise ValueError("a sampled response is empty; raise max_new_tokens")
    return Responses(torch.cat([encoded["input_ids"], responses], 1),
                     torch.cat([encoded["attention_mask"], mask.long()], 1),
                     encoded["input_ids"].shape[1], mask, ids)


def response_logits(model: Any, batch: Responses) -> torch.Tensor:
    """Logits (n, R, V) predicting each response token, teacher-forced; positions follow the left padding."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions)
    p = batch.prompt_length
    return out.logits[:, p - 1 : -1].float()


@dataclasses.dataclass
class KLMeasurement:
    forward_kl: KLEstimate  # chain-rule sum of exact per-token KLs, per response
    monte_carlo: KLEstimate  # log pi0(y) - log pi(y), per response
    predictors: dict[str, float]  # forward/reverse KL, TV, L2 named like the robot's (``<name>_<inputs>``)
    mean_tokens: float
    activations: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # layer -> (n, H), pi's

    def to_dict(self) -> dict[str, float]:
        return {"forward_kl": self.forward_kl.mean, "forward_kl_se": self.forward_kl.std_error,
                "monte_carlo_kl": self.monte_carlo.mean, "monte_carlo_kl_se": self.monte_carlo.std_error,
                "responses": self.forward_kl.n, "mean_response_tokens": self.mean_tokens}


def pooled_states(hidden: torch.Tensor, batch: Responses) -> torch.Tensor:
    """Each response's mean hidden state over its own tokens: (n, T, H) -> (n, H)."""
    states = hidden[:, batch.prompt_length - 1 : -1].float()
    mask = batch.response_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1)


@contextlib.contextmanager
def capture(model: Any, layers: list[str], batch: Responses, into: dict[str, list[torch.Tensor]]):
    """Record the pooled outputs (``pooled_states``) of the named modules during the forwards inside."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model")

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            into.setdefault(name, []).append(pooled_states(output.detach(), batch))

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield into
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def measure(model: Any, batch: Responses, inputs: str = "new", chunk: int = 16,
            layers: list[str] | None = None, dtype: torch.dtype = torch.float64) -> KLMeasurement:
    """KL(pi0 || pi) along ``batch``'s pi0 responses (see the module docstring), chunk by chunk so that only
    ``chunk`` responses' logits are held at once; ``layers`` also records pi's pooled hidden states there.

    The divergences are computed in ``dtype``: float64 by default, because a small KL is a difference of
    nearly equal log-probabilities over tens of thousands of tokens, which float32 resolves only to ~1e-4
    relative; float32 halves the memory for large vocabularies and long responses."""
    was_training = model.training
    model.eval()
    token_kl, ratios, weighted, states = [], [], {}, {}
    n = batch.input_ids.shape[0]
    try:
        for start in range(0, n, chunk):
            rows = batch.rows(start, start + chunk)
            with base_model(model):
                base = response_logits(model, rows).to(dtype)
            with capture(model, layers or [], rows, states):
                current = response_logits(model, rows).to(dtype)
            tokens = rows.tokens
            token_kl.append(action_token_kl(base, current, rows.response_mask, support="full").double())
            ratios.append(log_ratio(base, current, tokens, rows.response_mask, support="full").double())
            for name, value in output_predictors(base, current, inputs, "full", rows.response_mask).items():
                weighted[name] = weighted.get(name, 0.0) + value * rows.input_ids.shape[0]
    finally:
        model.train(was_training)
    return KLMeasurement(KLEstimate.from_samples(torch.cat(token_kl)), KLEstimate.from_samples(torch.cat(ratios)),
                         {k: v / n for k, v in weighted.items()}, float(batch.response_mask.sum(-1).double().mean()),
                         {name: torch.cat(values) for name, values in states.items()})


class KLCallback(TrainerCallback):
    """Measures KL(pi0 || pi) on a fixed probe of pi0 responses every ``every`` optimizer steps (and at step 0
    and the end), adds it to the trainer's logs (``kl/forward``, ``kl/forward_se``, ``kl/monte_carlo``) and
    appends each measurement to ``path`` (JSON lines)."""

    def __init__(self, probe: Responses, every: int, path: Path | None = None, dtype: torch.dtype = torch.float64):
        if every < 1:
            raise ValueError(f"every must be >= 1 optimizer steps, got {every}")
        self.probe, self.every, self.path, self.dtype = probe, every, path, dtype
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}

    def _measure(self, model: Any, step: int) -> None:
        if self.history and self.history[-1]["step"] == step:
            return
        record = {"step": step, **measure(model, self.probe, dtype=self.dtype).to_dict()}
        self.history.append(record)
        self._pending = {"kl/forward": record["forward_kl"], "kl/forward_se": record["forward_kl_se"],
                         "kl/monte_carlo": record["monte_carlo_kl"]}
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self._measure(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._pending:
            return
        logs.update(self._pending)  # what later callbacks (printers, trackers) see
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)  # the Trainer stored its own copy before this call
        self._pending = {}
