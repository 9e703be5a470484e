"""Every registered policy through one contract, plus the generic checkpoint, the instruction encoder
and a behaviour-cloning smoke test of the CPU policies.

References are computed here, independently of the code under test: log-softmax and entropy in
float64 from the logits, OpenVLA's bin centres and un-normalisation formula written out, mean word
embeddings gathered by hand, and cross-entropy from ``torch.nn.functional``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vla_cl.policies import (
    ObsBatch,
    Policy,
    get_policy_class,
    list_policies,
    load_policy,
    make_policy,
    registry,
    save_policy,
)
from vla_cl.policies import checkpoint as ckpt
from vla_cl.policies.base import choose_tokens
from vla_cl.policies.instructions import InstructionEncoder, build_vocabulary, split_words
from vla_cl.tokenizer import ActionTokenizer, NormStats

REPO = Path(__file__).resolve().parent.parent
Q01 = [-0.1, -0.1, -0.05, -0.2, -0.2, -0.3, -1.0]
Q99 = [0.1, 0.12, 0.05, 0.2, 0.25, 0.3, 1.0]
MASK = [True] * 6 + [False]
TASKS = ["pick up the red cube", "push the cube forward"]  # the tiny configs' instructions
SMALL = ["state_token", "small_vlm"]


@dataclasses.dataclass
class Case:
    policy: Policy
    obs: Callable[[int, int], ObsBatch]  # (batch size, seed) -> observations the policy reads
    prepare_finetune: Callable[[Policy], None]  # what makes reference() give the current weights


def small_obs(state_dim: int, image_size: int) -> Callable[[int, int], ObsBatch]:
    def make(n: int, seed: int) -> ObsBatch:
        g = torch.Generator().manual_seed(seed)
        state = torch.randn(n, state_dim, generator=g) if state_dim else None
        image = torch.randint(0, 256, (n, image_size, image_size, 3), generator=g, dtype=torch.uint8)
        return ObsBatch([TASKS[i % 2] for i in range(n)], state, image)

    return make


def small_case(name: str) -> Case:
    config = get_policy_class(name).tiny_config()
    tokenizer = ActionTokenizer(vocab_size=256, n_bins=256, stats=NormStats(Q01, Q99, np.array(MASK)))
    policy = make_policy(name, tokenizer=tokenizer, **config)
    # 36 px: the small VLM must resize to its 32 px input
    return Case(policy, small_obs(config.get("state_dim", 0), 36), lambda p: p.mark_reference())


def openvla_case() -> Case:
    from vla_cl.policies.openvla import OpenVLAConfig
    from vla_cl.policies.openvla.processing import standin_tokenizer

    stats = {"toy": {"action": {"q01": Q01, "q99": Q99, "mask": MASK}}}
    policy = make_policy(
        "openvla",
        config=OpenVLAConfig.tiny(norm_stats=stats),
        text_tokenizer=standin_tokenizer(),
        unnorm_key="toy",
        seed=1,
        greedy_vocabulary="action",
    )

    def make(n: int, seed: int) -> ObsBatch:
        g = torch.Generator().manual_seed(seed)
        image = torch.randint(0, 256, (n, 40, 52, 3), generator=g, dtype=torch.uint8)
        return ObsBatch([["pick up the can", "open the top drawer"][i % 2] for i in range(n)], image=image)

    return Case(policy, make, lambda p: p.add_lora(rank=4))


FACTORIES: dict[str, Callable[[], Case]] = {
    "state_token": lambda: small_case("state_token"),
    "small_vlm": lambda: small_case("small_vlm"),
    "openvla": openvla_case,
}


@pytest.fixture(params=list_policies())
def case(request) -> Case:
    torch.manual_seed(0)
    if request.param not in FACTORIES:
        pytest.fail(f"policy {request.param!r} is registered but has no test factory in FACTORIES")
    return FACTORIES[request.param]()


def some_tokens(policy: Policy, n: int, seed: int) -> torch.Tensor:
    support = policy.action_support
    return torch.randint(
        support.start, support.stop, (n, policy.action_dim), generator=torch.Generator().manual_seed(seed)
    )


def reference_log_softmax(policy: Policy, logits: torch.Tensor) -> torch.Tensor:
    """log p over the action support, written out in float64: x - max - log(sum(exp(x - max)))."""
    support = policy.action_support
    x = logits[..., support.start : support.stop].double()
    shifted = x - x.max(dim=-1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def pick(log_p: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """log_p[b, d, tokens[b, d] - start] for every (b, d), by explicit indexing."""
    b, d = torch.meshgrid(torch.arange(tokens.shape[0]), torch.arange(tokens.shape[1]), indexing="ij")
    return log_p[b, d, tokens - start]


# ---------------------------------------------------------------------------------------- the contract


def test_logits_have_shape_b_d_v_and_float32(case):
    policy, obs = case.policy, case.obs(3, 0)
    logits = policy.action_logits(obs, some_tokens(policy, 3, 0))
    assert logits.dtype == torch.float32
    assert logits.shape[:2] == (3, policy.action_dim) and logits.shape[2] >= policy.action_support.stop
    assert bool(torch.isfinite(logits).all())


def test_teacher_forcing_semantics(case):
    policy, obs = case.policy, case.obs(2, 1)
    tokens, other = some_tokens(policy, 2, 1), some_tokens(policy, 2, 2)
    with torch.no_grad():
        logits = policy.action_logits(obs, tokens)
        if not policy.autoregressive:
            assert torch.equal(policy.action_logits(obs, other), logits)
            assert torch.equal(policy.action_logits(obs, None), logits)
            return
        for d in range(1, policy.action_dim):
            later = tokens.clone()
            later[:, d:] = other[:, d:]
            assert torch.equal(policy.action_logits(obs, later)[:, : d + 1], logits[:, : d + 1]), d
            earlier = tokens.clone()
            earlier[:, d - 1] = torch.where(
                tokens[:, d - 1] == other[:, d - 1], tokens[:, d - 1] + 1, other[:, d - 1]
            )
            changed = policy.action_logits(obs, earlier)
            assert not torch.allclose(changed[:, d], logits[:, d]), d


def test_generate_log_probs_match_independent_log_softmax(case):
    policy, obs = case.policy, case.obs(4, 2)
    sample = policy.generate(obs, generator=torch.Generator().manual_seed(0))
    support = policy.action_support
    assert sample.tokens.shape == (4, policy.action_dim)
    assert bool(((sample.tokens >= support.start) & (sample.tokens < support.stop)).all())
    # generate's log-probs come from its own decoding pass (step by step, a KV cache for OpenVLA); the
    # reference is an independent teacher-forced forward on the tokens it chose, with the log-softmax over
    # the action support and the gather written out here (a KV cache changes only rounding)
    with torch.no_grad():
        expected = pick(reference_log_softmax(policy, policy.action_logits(obs, sample.tokens)), sample.tokens,
                        support.start)
    assert sample.log_probs.shape == (4, policy.action_dim)
    torch.testing.assert_close(sample.log_probs.double(), expected, atol=1e-5, rtol=0)
    # Continuous actions: OpenVLA's bin centres, then 0.5 (a + 1)(q99 - q01) + q01 where masked.
    centres = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    normalized = centres[np.clip(support.stop - sample.tokens.numpy() - 1, 0, 254)]
    q01, q99 = np.array(Q01), np.array(Q99)
    actions = np.where(MASK, 0.5 * (normalized + 1) * (q99 - q01) + q01, normalized)
    np.testing.assert_allclose(sample.normalized, normalized, atol=1e-12)
    np.testing.assert_allclose(sample.actions, actions, atol=1e-6)


def test_greedy_generation_is_the_argmax(case):
    policy, obs = case.policy, case.obs(4, 3)
    tokens = policy.generate(obs, greedy=True).tokens
    with torch.no_grad():
        logits = policy.action_logits(obs, tokens)
    support = policy.action_support
    assert torch.equal(tokens, logits[..., support.start : support.stop].argmax(-1) + support.start)


def test_seeded_sampling_is_reproducible(case):
    policy, obs = case.policy, case.obs(4, 4)
    draw = lambda seed: policy.generate(obs, generator=torch.Generator().manual_seed(seed)).tokens
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_entropy_matches_direct_computation(case):
    policy, obs = case.policy, case.obs(3, 5)
    tokens = some_tokens(policy, 3, 5)
    with torch.no_grad():
        logp = reference_log_softmax(policy, policy.action_logits(obs, tokens))
        entropy = policy.entropy(obs, tokens)
    assert entropy.shape == (3, policy.action_dim)
    torch.testing.assert_close(entropy.double(), -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_bit_exact(case, tmp_path):
    policy, obs = case.policy, case.obs(3, 6)
    folder = save_policy(policy, tmp_path / "checkpoint")
    loaded = load_policy(folder)
    assert type(loaded) is type(policy)
    if type(policy).save_pretrained is Policy.save_pretrained:  # the generic format keeps the whole config
        assert loaded.config_dict() == policy.config_dict()
    before, after = policy.state_dict(), loaded.state_dict()
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    tokens = some_tokens(policy, 3, 6)
    with torch.no_grad():
        assert torch.equal(loaded.action_logits(obs, tokens), policy.action_logits(obs, tokens))
    act = lambda p: p.act(obs, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(act(loaded), act(policy))


def test_reference_is_the_pre_finetuning_policy(case):
    policy, obs = case.policy, case.obs(4, 7)
    tokens = some_tokens(policy, 4, 7)
    with torch.no_grad():
        base = policy.action_logits(obs, tokens)
    case.prepare_finetune(policy)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        logits = policy.action_logits(obs, tokens)
        with policy.reference():  # pi0 between pi's forward and the backward: the KL-penalty pattern
            ref = policy.action_logits(obs, tokens)
        assert not ref.requires_grad
        support = policy.action_support
        kl = F.kl_div(
            torch.log_softmax(logits[..., support.start : support.stop], -1),
            torch.log_softmax(ref[..., support.start : support.stop], -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = -policy.log_probs(obs, tokens).mean() + kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        tuned = policy.action_logits(obs, tokens)
        assert not torch.allclose(tuned, base)
        with policy.reference():
            assert torch.equal(policy.action_logits(obs, tokens), base)
        assert torch.equal(policy.action_logits(obs, tokens), tuned)
    assert all(torch.equal(v, weights[k]) for k, v in policy.state_dict().items())


def test_nan_state_is_rejected(case):
    with pytest.raises(ValueError, match="NaN"):
        ObsBatch(["pick"], state=torch.tensor([[0.0, float("nan")]]))
    policy, obs = case.policy, case.obs(2, 8)
    if getattr(policy, "state_dim", 0):  # policies that read the state check it again at use
        obs.state[1, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            policy.action_logits(obs, some_tokens(policy, 2, 8))


def test_value_head_gives_one_value_per_observation(case):
    policy, obs = case.policy, case.obs(3, 9)
    if not policy.has_value_head:
        with pytest.raises(NotImplementedError, match="value head"):
            policy.value(obs)
        return
    value = policy.value(obs)
    assert value.shape == (3,) and value.dtype == torch.float32 and bool(torch.isfinite(value).all())


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_the_policies_and_names_them_in_errors():
    assert {"state_token", "small_vlm", "openvla"} <= set(list_policies())
    with pytest.raises(ValueError, match="registered policies: .*small_vlm.*state_token"):
        make_policy("no_such_policy")


def test_register_policy_checks_the_class(monkeypatch):
    monkeypatch.setattr(registry, "POLICIES", registry.POLICIES.copy())
    registry.register_policy("mine", "vla_cl.policies.state_policy:StateTokenPolicy")
    with pytest.raises(TypeError, match="whose name is 'state_token'"):
        get_policy_class("mine")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_policy("state_token", "vla_cl.policies.small_vlm:SmallVLMPolicy")
    with pytest.raises(ValueError, match="module:ClassName"):
        registry.register_policy("bad", "vla_cl.policies.small_vlm.SmallVLMPolicy")


def test_imports_are_lazy():
    code = (
        "import sys, vla_cl.policies as p; names = p.list_policies(); "
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'vla_cl.policies.openvla', "
        "'vla_cl.policies.state_policy', 'vla_cl.policies.small_vlm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------- generic checkpoints


@pytest.fixture(params=SMALL)
def saved(request, tmp_path) -> tuple[Case, Path]:
    torch.manual_seed(0)
    case = small_case(request.param)
    return case, save_policy(case.policy, tmp_path / "ckpt", metadata={"task": "test"})


def rewrite(folder: Path, edit: Callable[[dict], None]) -> None:
    """Edit the tensors and re-record their digest, so that loading reaches the tensor checks."""
    tensors = load_file(str(folder / ckpt.WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(folder / ckpt.WEIGHTS_FILE))
    config = json.loads((folder / ckpt.CONFIG_FILE).read_text())
    config["weights_sha256"] = ckpt._sha256(folder / ckpt.WEIGHTS_FILE)
    (folder / ckpt.CONFIG_FILE).write_text(json.dumps(config))


def test_checkpoint_records_format_tokenizer_and_metadata(saved):
    case, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "vla_cl.policy" and config["format_version"] == 1
    assert config["policy"] == case.policy.name and config["action_dim"] == 7
    assert config["tokenizer"]["stats"] == {"q01": Q01, "q99": Q99, "mask": MASK}
    assert config["metadata"] == {"task": "test"}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_missing_and_unexpected_parameters_are_listed(saved):
    _, folder = saved
    name = min(load_file(str(folder / ckpt.WEIGHTS_FILE)))
    rewrite(folder, lambda t: t.update(extra_weight=t.pop(name)))
    with pytest.raises(ValueError, match=rf"missing parameters: {name}.*unexpected parameters: extra_weight"):
        load_policy(folder)


def test_shape_mismatch_is_listed_with_both_shapes(saved):
    _, folder = saved
    rewrite(folder, lambda t: t.update({"instruction.embedding.weight": torch.zeros(3, 2)}))
    with pytest.raises(
        ValueError, match=r"shape mismatches: instruction.embedding.weight: checkpoint \[3, 2\], expected"
    ):
        load_policy(folder)


def test_config_that_does_not_fit_the_weights_is_a_mismatch(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["config"]["vocabulary"].append("zebra")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches: instruction.embedding.weight"):
        load_policy(folder)


def test_corrupt_files_are_reported(saved):
    _, folder = saved
    weights = folder / ckpt.WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt: its SHA-256"):
        load_policy(folder)
    rewrite_digest_only = json.loads((folder / "config.json").read_text())
    rewrite_digest_only["weights_sha256"] = ckpt._sha256(weights)
    (folder / "config.json").write_text(json.dumps(rewrite_digest_only))
    with pytest.raises(ValueError, match="corrupt: not a readable safetensors"):
        load_policy(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt: not valid JSON"):
        load_policy(folder)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(saved, tmp_path):
    _, folder = saved
    boom = _Boom()
    boom.marker = str(tmp_path / "unpickled")
    torch.save({"w": boom}, folder / ckpt.WEIGHTS_FILE)
    rewrite_config = json.loads((folder / "config.json").read_text())
    rewrite_config["weights_sha256"] = ckpt._sha256(folder / ckpt.WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(rewrite_config))
    with pytest.raises(ValueError, match="corrupt"):
        load_policy(folder)
    assert not (tmp_path / "unpickled").exists()


def test_foreign_folders_are_named(saved, tmp_path):
    case, folder = saved
    with pytest.raises(ValueError, match="has no config.json"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a policy checkpoint this library knows.*model_type='bert'"):
        load_policy(foreign)
    with pytest.raises(ValueError, match="not a vla_cl.policy checkpoint"):
        type(case.policy).from_pretrained(foreign)
    config = json.loads((folder / "config.json").read_text())
    for key, value, message in [("format_version", 99, "upgrade"), ("policy", "nope", "not registered")]:
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            load_policy(folder)
    (folder / "config.json").write_text(json.dumps(config))
    other = get_policy_class(next(n for n in SMALL if n != case.policy.name))
    with pytest.raises(ValueError, match=f"holds a '{case.policy.name}' policy"):
        other.from_pretrained(folder)


def test_an_interrupted_save_leaves_no_half_checkpoint(saved, monkeypatch):
    case, folder = saved
    original = {k: v.clone() for k, v in case.policy.state_dict().items()}
    with torch.no_grad():
        for p in case.policy.parameters():
            p.add_(1.0)

    def crash(path: Path) -> None:
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt, "_fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_policy(case.policy, folder)  # over the existing checkpoint
    with pytest.raises(KeyboardInterrupt):
        save_policy(case.policy, folder.parent / "fresh")
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporaries left
    kept = load_policy(folder).state_dict()
    assert all(torch.equal(kept[k], original[k]) for k in original)
    monkeypatch.undo()
    save_policy(case.policy, folder)  # a completed save replaces it
    assert not torch.equal(
        load_policy(folder).state_dict()[next(iter(original))], original[next(iter(original))]
    )


def test_save_refuses_to_overwrite_a_foreign_folder(saved, tmp_path):
    case, _ = saved
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_policy(case.policy, tmp_path / "notes")
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_policy(case.policy, tmp_path / "other", metadata={"when": object()})


# ---------------------------------------------------------------------------------------- instructions


def test_words_vocabulary_and_unknown_words():
    assert split_words("Pick up the RED cube, then stop!") == [
        "pick",
        "up",
        "the",
        "red",
        "cube",
        "then",
        "stop",
    ]
    vocabulary = build_vocabulary(TASKS)
    assert vocabulary == ["<pad>", "<unk>", "cube", "forward", "pick", "push", "red", "the", "up"]
    encoder = InstructionEncoder(vocabulary, 4)
    ids, mask = encoder.ids(["push the blue cube", "?!"])
    assert ids.tolist() == [[5, 7, 1, 2], [1, 0, 0, 0]] and mask.sum(1).tolist() == [4, 1]
    pooled = encoder(["push the blue cube"])
    table = encoder.embedding.weight
    torch.testing.assert_close(pooled[0], (table[5] + table[7] + table[1] + table[2]) / 4)
    with pytest.raises(ValueError, match="reads at most 2"):
        encoder.ids(["push the cube"], length=2)


def test_a_new_instruction_starts_as_the_prior_task(tmp_path):
    policy = small_case("state_token").policy
    obs = lambda text: ObsBatch(
        [text] * 3, state=torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        before = {text: policy.action_logits(obs(text)) for text in TASKS}
        new = policy.add_instruction("lift the red cube slightly and hold it", init_from=TASKS[0])
        assert new == ["lift", "slightly", "and", "hold", "it"]
        torch.testing.assert_close(
            policy.action_logits(obs("lift the red cube slightly and hold it")),
            before[TASKS[0]],
            atol=1e-5,
            rtol=0,
        )
        for text in TASKS:  # old tasks unchanged
            assert torch.equal(policy.action_logits(obs(text)), before[text])
    with pytest.raises(ValueError, match="already in the vocabulary"):
        policy.add_instruction("pick up the cube", init_from=TASKS[1])
    assert policy.config_dict()["vocabulary"][-5:] == new
    loaded = load_policy(save_policy(policy, tmp_path / "with_new_task"))
    new_obs = obs("lift the red cube slightly and hold it")
    with torch.no_grad():
        assert torch.equal(loaded.action_logits(new_obs), policy.action_logits(new_obs))


def test_reference_must_be_marked_again_after_the_vocabulary_grows():
    policy = small_case("state_token").policy
    policy.mark_reference()
    policy.add_instruction("lift it", init_from=TASKS[0])
    with pytest.raises(RuntimeError, match="mark_reference\\(\\) again"), policy.reference():
        pass


def test_state_policy_value_head_is_separate_from_the_actor():
    policy = small_case("state_token").policy
    obs = small_obs(5, 8)(6, 0)
    policy.log_probs(obs, some_tokens(policy, 6, 0)).sum().backward()
    assert all(p.grad is None for p in policy.critic.parameters())
    policy.zero_grad(set_to_none=True)
    policy.value(obs).sum().backward()
    assert all(p.grad is None for n, p in policy.named_parameters() if not n.startswith("critic."))


def test_small_vlm_sees_the_image_and_batches_do_not_leak():
    policy = small_case("small_vlm").policy
    obs = small_obs(3, 32)(2, 0)
    tokens = some_tokens(policy, 2, 0)
    with torch.no_grad():
        logits = policy.action_logits(obs, tokens)
        swapped = ObsBatch(obs.instruction, obs.state, obs.image.flip(0))
        assert not torch.allclose(policy.action_logits(swapped, tokens)[0], logits[0])
        alone = policy.action_logits(obs.select([0]), tokens[:1])
        wider = ObsBatch([obs.instruction[0], "push the cube forward and then stop"], obs.state, obs.image)
        torch.testing.assert_close(policy.action_logits(wider, tokens)[:1], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[:1], alone, atol=1e-5, rtol=0)


def test_small_vlm_cached_decoding_samples_as_the_full_recompute_loop():
    policy = small_case("small_vlm").policy
    obs = small_obs(3, 32)(5, 1)
    for greedy in (True, False):
        cached, cached_logits = policy._decode_tokens(obs, greedy, 0.7, torch.Generator().manual_seed(3))
        full, full_logits = Policy._decode_tokens(policy, obs, greedy, 0.7, torch.Generator().manual_seed(3))
        assert torch.equal(cached, full)
        torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=0)


def test_choose_tokens_samples_from_the_tempered_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    draws = choose_tokens(logits, False, 2.0, torch.Generator().manual_seed(0))
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]) / 2.0, -1)
    torch.testing.assert_close(torch.bincount(draws, minlength=3) / 20000.0, expected, atol=0.015, rtol=0)


# ---------------------------------------------------------------------------------------- behaviour cloning


@pytest.mark.parametrize("name", SMALL)
def test_behaviour_cloning_fits_a_tiny_dataset(name):
    """8 distinct observations (image colour / state sign x instruction) -> 8 target action sequences."""
    torch.manual_seed(0)
    policy = small_case(name).policy
    g = torch.Generator().manual_seed(1)
    n = 64
    kind = torch.arange(n) % 4
    colours = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=torch.uint8)
    image = colours[kind][:, None, None, :].expand(n, 32, 32, 3).clone()
    state = F.one_hot(kind, 4)[:, :3].float() + 0.05 * torch.randn(n, 3, generator=g)
    if name == "state_token":
        state = torch.cat([state, torch.zeros(n, 2)], dim=1)
    instruction = [TASKS[i // 4 % 2] for i in range(n)]
    obs = ObsBatch(instruction, state, image)
    table = torch.randint(0, 256, (8, 7), generator=g)
    targets = table[kind + 4 * (torch.arange(n) // 4 % 2)]
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses, accuracies = [], []
    for _ in range(120):
        logits = policy.action_logits(obs, targets)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append(float((logits.argmax(-1) == targets).float().mean()))
    assert losses[-1] < 0.2 * losses[0]
    assert accuracies[0] < 0.1 and accuracies[-1] > 0.95
    assert float((policy.generate(obs, greedy=True).tokens == targets).float().mean()) > 0.95


def test_quick_benchmark_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("benchmark_policies", REPO / "benchmarks" / "policies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd ms" in out and "state_token" in out and "small_vlm (image + state)" in out
    # The rollout-vs-decode table: one row per registered policy (openvla at its tiny preset). Its ratios
    # are timings on shared cores, so only their presence is checked here, not the <= 1.1 target.
    rollout = out[out.index("Rollout vs decode"):]
    assert "rollout/decode (batch 1)" in rollout and "rollout/decode (batch 8)" in rollout
    rows = [line for line in rollout.splitlines()[3:] if line.startswith("| ")]
    assert sorted(row.split("|")[1].split()[0].rstrip(",") for row in rows) == list_policies()
    assert "openvla (tiny)" in rollout


def test_a_policy_that_cannot_grow_a_value_head_says_so():
    """PPO needs a value head; a policy whose config has no value_head switch is refused with the fix."""
    from vla_cl.policies.state_policy import StateTokenPolicy

    class Headless(StateTokenPolicy):
        def config_dict(self):
            config = super().config_dict()
            config.pop("value_head")
            return config

    policy = Headless(ActionTokenizer(256, 256), state_dim=3, instructions=["push"], hidden=[8])
    with pytest.raises(ValueError, match="cannot be given a value head.*reinforce"):
        policy.with_value_head(seed=0)
