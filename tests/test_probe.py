"""KLProbe on real peft LoRA models: a disabled adapter and a cached pi0 give the same KL."""

import copy

import numpy as np
import peft
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vla_cl.kl import KLProbe
from vla_cl.tokenizer import ActionTokenizer

TOKENIZER = ActionTokenizer(vocab_size=64, n_bins=16)  # action ids 48..63 of a 64-token LLM vocabulary
PROMPT, D = 5, 3


def numpy_sequence_kl(base_logits, logits, columns):
    """Reference: exact per-position KL over the given columns, summed over positions, in float64."""

    def log_softmax(x):
        x = np.asarray(x, np.float64)[..., columns]
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(base_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(-1).sum(-1)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    model = peft.get_peft_model(
        LlamaForCausalLM(config).eval(),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    prompts = torch.randint(1, 48, (40, PROMPT))
    actions = torch.randint(48, 64, (40, D))
    inputs = {"input_ids": torch.cat([prompts, actions], dim=1)}

    def logits_fn(batch):
        # Position t predicts token t + 1: the D action tokens are predicted at PROMPT - 1 .. PROMPT + D - 2.
        return model(input_ids=batch["input_ids"]).logits[:, PROMPT - 1 : PROMPT - 1 + D, :]

    return model, inputs, logits_fn


def train_a_little(model, inputs, steps=5):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    target = inputs["input_ids"][:, 1:].clone()
    target[:, : PROMPT - 1] = -100
    target[:, PROMPT - 1 :] = 50  # push every action token towards id 50
    for _ in range(steps):
        loss = model(
            input_ids=inputs["input_ids"], labels=torch.cat([inputs["input_ids"][:, :1], target], 1)
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_llama_lora_probe_disabled_adapter_equals_cache(llama):
    model, inputs, logits_fn = llama
    probe = KLProbe(inputs, batch_size=16, support=TOKENIZER.bin_ids)
    probe.cache_reference(logits_fn)
    bf16_probe = KLProbe(inputs, batch_size=16, support=TOKENIZER.bin_ids, cache_dtype=torch.bfloat16)
    bf16_probe.cache_reference(logits_fn)
    with torch.no_grad():
        base_logits = logits_fn(inputs)

    before = probe.measure(logits_fn, reference=model.disable_adapter)
    assert before.mean == 0.0 and before.n == 40  # LoRA's B starts at zero: pi == pi0 exactly
    assert probe.measure(logits_fn).mean == 0.0

    train_a_little(model, inputs)
    model.eval()
    with torch.no_grad():
        logits_now = logits_fn(inputs)
    adapter_off = probe.measure(logits_fn, reference=model.disable_adapter)
    cached = probe.measure(logits_fn)
    assert adapter_off.mean > 0.01
    assert torch.equal(adapter_off.per_sample, cached.per_sample)
    assert adapter_off.std_error == cached.std_error and adapter_off.mean == cached.mean
    expected = numpy_sequence_kl(base_logits.numpy(), logits_now.numpy(), slice(48, 64))
    np.testing.assert_allclose(cached.per_sample.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        bf16_probe.measure(logits_fn).per_sample.numpy(), expected, rtol=2e-2, atol=1e-3
    )
    # The adapter is back on after measuring: pi's logits are unchanged.
    with torch.no_grad():
        torch.testing.assert_close(logits_fn(inputs), logits_now, rtol=0, atol=0)


class HeadsPolicy(nn.Module):
    """A small CPU policy: an MLP with D independent 16-way action heads (own vocabulary, ids 0..15)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.heads = nn.Linear(32, 7 * 16)

    def forward(self, obs):
        return self.heads(self.body(obs)).reshape(obs.shape[0], 7, 16)


def test_mlp_policy_frozen_copy_cache_equals_disabled_adapter():
    torch.manual_seed(1)
    base = HeadsPolicy()
    frozen = copy.deepcopy(base)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["body.0", "heads"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    observations = torch.randn(50, 8)
    probe = KLProbe(observations, batch_size=16)  # 50 = 16 + 16 + 16 + 2: a ragged last batch
    probe.cache_reference(frozen)
    del frozen  # the cache is all the probe needs from pi0
    cached, adapter_off = probe.measure(model), probe.measure(model, reference=model.disable_adapter)
    assert cached.mean > 0.0
    torch.testing.assert_close(cached.per_sample, adapter_off.per_sample, rtol=1e-6, atol=1e-7)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(observations)
    expected = numpy_sequence_kl(base_logits.numpy(), model(observations).detach().numpy(), slice(0, 16))
    np.testing.assert_allclose(cached.per_sample.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert cached.std_error == pytest.approx(float(np.std(expected, ddof=1) / np.sqrt(50)), rel=1e-3)


def test_plain_callables_and_list_inputs():
    probe = KLProbe([torch.zeros(2, 4)] * 5, batch_size=2)
    assert [len(batch) for batch in probe.batches()] == [2, 2, 1]
    probe.cache_reference(lambda batch: torch.stack(batch))
    assert probe.cached and probe.measure(lambda batch: torch.stack(batch)).mean == 0.0
    probe.clear_cache()
    assert not probe.cached


class Rows:
    """A batch object that cannot be sliced, only ``select``ed, like ``policies.ObsBatch``."""

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def select(self, rows):
        return Rows(self.values[rows])


def test_mapping_of_batch_objects_and_tensors():
    probe = KLProbe(
        {"obs": Rows(torch.arange(5.0)), "tokens": torch.zeros(5, 7, dtype=torch.long)}, batch_size=3
    )
    batches = list(probe.batches())
    assert [len(b["obs"]) for b in batches] == [3, 2] and batches[1]["tokens"].shape == (2, 7)
    logits_fn = lambda batch: batch["obs"].values[:, None, None].expand(-1, 7, 16) * torch.arange(16.0)
    probe.cache_reference(logits_fn)
    assert probe.measure(logits_fn).per_sample.shape == (5,)


def test_bad_use_raises_clearly():
    obs = torch.randn(6, 8)
    policy = HeadsPolicy()
    with pytest.raises(ValueError, match="cache_reference"):
        KLProbe(obs).measure(policy)
    with pytest.raises(ValueError, match="without parentheses"):
        KLProbe(obs).measure(policy, reference=torch.no_grad())
    probe = KLProbe(obs, batch_size=4)
    probe.cache_reference(policy)
    with pytest.raises(ValueError, match="does not match the reference"):
        probe.measure(lambda batch: policy(batch)[:, :5])
    with pytest.raises(ValueError, match="batch_size"):
        KLProbe(obs, batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        KLProbe(obs[:0])
    with pytest.raises(ValueError, match="equally long"):
        KLProbe({"a": obs, "b": obs[:3]})
    with pytest.raises(ValueError, match="reference logits must be finite"):
        KLProbe(obs).cache_reference(lambda batch: torch.full((batch.shape[0], 7, 16), float("nan")))

    def poisoned(batch):
        logits = policy(batch).detach().clone()
        logits[1, 2, 3] = float("-inf")
        return logits

    with pytest.raises(ValueError, match=r"logits must be finite, got -inf at index \(1, 2, 3\)"):
        probe.measure(poisoned)
    with pytest.raises(ValueError, match="cache_dtype"):
        KLProbe(obs, cache_dtype=torch.int8)
