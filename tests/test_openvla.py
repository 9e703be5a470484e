"""OpenVLAPolicy on tiny random checkpoints written in the exact openvla/openvla-7b layout.

References are independent of the code under test: transformers' own Dinov2WithRegisters and SigLIP
vision models (weights mapped from the timm-style names), the projector written out with F.linear,
the prompt and PIL preprocessing spelled out here, and ``LlamaForCausalLM`` called directly on
hand-built ``inputs_embeds``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vla_cl.policies.base import ObsBatch
from vla_cl.policies.openvla import OpenVLAConfig, OpenVLAPolicy
from vla_cl.policies.openvla.processing import pixel_values, resize_images, standin_tokenizer

REPO = Path(__file__).resolve().parent.parent
D = 7
STATS = {
    "toy_dataset": {"action": {"q01": [-0.05, -0.1, -0.02, -0.3, -0.2, -0.4, 0.0],
                               "q99": [0.05, 0.1, 0.03, 0.3, 0.25, 0.4, 1.0],
                               "mask": [True] * 6 + [False]}},
    "other_dataset": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}},
}
INSTRUCTIONS = ["Pick up the Coke can", "open the top drawer and put the bowl inside", "stack the blocks"]


def images(seed: int, n: int = 3, size: tuple[int, int] = (40, 52)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, *size, 3), dtype=np.uint8))


def obs(seed: int = 0, instructions=INSTRUCTIONS) -> ObsBatch:
    return ObsBatch(list(instructions), image=images(seed, len(instructions)))


@pytest.fixture(scope="module")
def base() -> OpenVLAPolicy:
    return OpenVLAPolicy.tiny(STATS, "toy_dataset", seed=1).eval()


@pytest.fixture(scope="module")
def folder(base, tmp_path_factory) -> Path:
    return base.save_pretrained(tmp_path_factory.mktemp("tiny") / "openvla-tiny", max_shard_size="300KB")


def some_tokens(policy: OpenVLAPolicy, n: int, seed: int = 0) -> torch.Tensor:
    support = policy.action_support
    return torch.randint(support.start, support.stop, (n, D), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- architecture


def test_full_size_architecture_matches_openvla_7b():
    shapes = OpenVLAPolicy.expected_shapes(OpenVLAConfig.full_size())
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_541_237_184  # openvla/openvla-7b's count
    assert shapes["vision_backbone.featurizer.pos_embed"] == (1, 256, 1024)  # patches only
    assert shapes["vision_backbone.featurizer.reg_token"] == (1, 4, 1024)
    assert shapes["vision_backbone.featurizer.blocks.23.ls2.scale_factor"] == (1024,)
    assert shapes["vision_backbone.fused_featurizer.pos_embed"] == (1, 256, 1152)
    assert shapes["vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight"] == (4304, 1152)
    assert shapes["vision_backbone.fused_featurizer.attn_pool.kv.weight"] == (2304, 1152)
    assert shapes["projector.fc1.weight"] == (8704, 2176)
    assert shapes["projector.fc3.weight"] == (4096, 4096)
    assert shapes["language_model.lm_head.weight"] == (32064, 4096)
    assert "vision_backbone.fused_featurizer.cls_token" not in shapes


def test_sparse_hub_config_means_llama2_7b():
    # openvla-7b's config.json gives only these text_config fields; the rest are Llama-2-7B's.
    data = OpenVLAConfig.full_size(STATS).to_dict()
    data["text_config"] = {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064}
    data["auto_map"] = {"AutoConfig": "configuration_prismatic.OpenVLAConfig"}
    config = OpenVLAConfig.from_dict(data)
    llama = config.llama_config()
    assert (llama.hidden_size, llama.num_hidden_layers, llama.intermediate_size, llama.vocab_size) == (4096, 32, 11008, 32064)
    assert llama.rms_norm_eps == 1e-6 and not llama.tie_word_embeddings
    assert config.action_vocab_size == 32000 and config.num_patches == 256
    assert config.to_dict()["auto_map"] == data["auto_map"]  # unknown fields survive a save
    assert OpenVLAConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def _hf_dino(tower) -> torch.nn.Module:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    c = tower.config
    ref = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=c.embed_dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        mlp_ratio=c.mlp_hidden_dim // c.embed_dim, patch_size=c.patch_size, image_size=28,
        num_register_tokens=c.num_register_tokens, layer_norm_eps=1e-6, hidden_act="gelu")).eval()
    state = {"embeddings.cls_token": tower.cls_token, "embeddings.register_tokens": tower.reg_token,
             "embeddings.mask_token": torch.zeros(1, c.embed_dim),
             # timm adds no position embedding to the class token: HF's slot for it is set to zero.
             "embeddings.position_embeddings": torch.cat([torch.zeros(1, 1, c.embed_dim), tower.pos_embed], 1),
             "embeddings.patch_embeddings.projection.weight": tower.patch_embed.proj.weight,
             "embeddings.patch_embeddings.projection.bias": tower.patch_embed.proj.bias,
             "layernorm.weight": tower.norm.weight, "layernorm.bias": tower.norm.bias}
    for i, block in enumerate(tower.blocks):
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        p = f"encoder.layer.{i}."
        state |= {p + "attention.q_proj.weight": q, p + "attention.k_proj.weight": k, p + "attention.v_proj.weight": v,
                  p + "attention.q_proj.bias": qb, p + "attention.k_proj.bias": kb, p + "attention.v_proj.bias": vb,
                  p + "attention.o_proj.weight": block.attn.proj.weight, p + "attention.o_proj.bias": block.attn.proj.bias,
                  p + "layer_scale1.lambda1": block.ls1.scale_factor, p + "layer_scale2.lambda1": block.ls2.scale_factor}
        for norm in ("norm1", "norm2"):
            state |= {p + f"{norm}.weight": getattr(block, norm).weight, p + f"{norm}.bias": getattr(block, norm).bias}
        for fc in ("fc1", "fc2"):
            state |= {p + f"mlp.{fc}.weight": getattr(block.mlp, fc).weight, p + f"mlp.{fc}.bias": getattr(block.mlp, fc).bias}
    ref.load_state_dict(state, strict=True)
    return ref


def _hf_siglip(tower) -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    c = tower.config
    ref = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=c.embed_dim, intermediate_size=c.mlp_hidden_dim, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, image_size=28, patch_size=c.patch_size, hidden_act="gelu",
        layer_norm_eps=1e-6)).eval()
    state = {"embeddings.patch_embedding.weight": tower.patch_embed.proj.weight,
             "embeddings.patch_embedding.bias": tower.patch_embed.proj.bias,
             "embeddings.position_embedding.weight": tower.pos_embed[0]}
    for i, block in enumerate(tower.blocks):
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        p = f"encoder.layers.{i}."
        state |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                  p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb, p + "self_attn.v_proj.bias": vb,
                  p + "self_attn.out_proj.weight": block.attn.proj.weight, p + "self_attn.out_proj.bias": block.attn.proj.bias,
                  p + "layer_norm1.weight": block.norm1.weight, p + "layer_norm1.bias": block.norm1.bias,
                  p + "layer_norm2.weight": block.norm2.weight, p + "layer_norm2.bias": block.norm2.bias}
        for fc in ("fc1", "fc2"):
            state |= {p + f"mlp.{fc}.weight": getattr(block.mlp, fc).weight, p + f"mlp.{fc}.bias": getattr(block.mlp, fc).bias}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("head.", "post_layernorm.")) for k in missing)
    return ref


def reference_patch_features(policy: OpenVLAPolicy, pixels: torch.Tensor) -> torch.Tensor:
    """Second-to-last block outputs of transformers' DINOv2-reg and SigLIP, prefix tokens dropped."""
    dino, siglip = policy.vision_backbone.featurizer, policy.vision_backbone.fused_featurizer
    with torch.no_grad():
        a = _hf_dino(dino)(pixels[:, :3], output_hidden_states=True).hidden_states[dino.config.depth - 1]
        b = _hf_siglip(siglip)(pixels[:, 3:], output_hidden_states=True).hidden_states[siglip.config.depth - 1]
    return torch.cat([a[:, dino.config.num_prefix_tokens :], b], dim=2)


def test_vision_towers_match_transformers_dinov2_and_siglip(base):
    pixels = torch.randn(2, 6, 28, 28)
    with torch.no_grad():
        ours = base.vision_backbone(pixels)
    torch.testing.assert_close(ours, reference_patch_features(base, pixels), atol=1e-5, rtol=1e-5)


def test_preprocessing_matches_pil_bicubic_and_both_normalisations(base):
    frames = images(3, 2, (61, 47))
    expected = []
    for frame in frames.numpy():
        resized = np.asarray(Image.fromarray(frame).resize((28, 28), Image.BICUBIC), np.float32) / 255.0
        chw = torch.from_numpy(resized).permute(2, 0, 1)
        imagenet = (chw - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        expected.append(torch.cat([imagenet, (chw - 0.5) / 0.5]))
    got = pixel_values(frames, base.config.towers(), 28, "pil")
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=0)
    for frames in (images(3, 2, (61, 47)), images(4, 2, (90, 120))):
        approx = (resize_images(frames, 28, "torch").int() - resize_images(frames, 28, "pil").int()).abs()
        assert int(approx.max()) <= 2 and float((approx > 0).float().mean()) < 0.01


# ---------------------------------------------------------------------------------------- the forward pass


def reference_action_logits(policy: OpenVLAPolicy, batch: ObsBatch, tokens: torch.Tensor) -> torch.Tensor:
    """Row by row: PIL preprocessing, transformers' vision towers, the projector by hand, OpenVLA's prompt
    with token 3 (the tiny "▁") appended, and LlamaForCausalLM on [BOS, patches, prompt[1:], tokens[:-1]]."""
    rows = []
    llm = policy.llm()
    for i, instruction in enumerate(batch.instruction):
        frame = np.asarray(Image.fromarray(batch.image[i].numpy()).resize((28, 28), Image.BICUBIC), np.float32) / 255.0
        chw = torch.from_numpy(frame).permute(2, 0, 1)[None]
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        features = reference_patch_features(policy, torch.cat([(chw - mean) / std, (chw - 0.5) / 0.5], dim=1))
        p = policy.projector
        patches = F.linear(F.gelu(F.linear(F.gelu(F.linear(features, p.fc1.weight, p.fc1.bias)), p.fc2.weight, p.fc2.bias)),
                           p.fc3.weight, p.fc3.bias)
        prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
        ids = policy.text_tokenizer(prompt)["input_ids"] + [3]
        assert ids[0] == 1
        embed = llm.get_input_embeddings()
        sequence = torch.cat([embed(torch.tensor([ids[:1]])), patches, embed(torch.tensor([ids[1:]])),
                              embed(tokens[i : i + 1, :-1])], dim=1)
        with torch.no_grad():
            rows.append(llm(inputs_embeds=sequence).logits[0, -D:])
    return torch.stack(rows)


def test_action_logits_match_an_independent_forward(base):
    batch = obs(0)
    tokens = some_tokens(base, len(batch))
    with torch.no_grad():
        logits = base.action_logits(batch, tokens)
    assert logits.shape == (3, D, 576)
    torch.testing.assert_close(logits, reference_action_logits(base, batch, tokens), atol=2e-5, rtol=1e-4)


def test_two_images_give_different_action_logits_and_bos_ignores_the_image(base):
    tokens = some_tokens(base, 3)
    with torch.no_grad():
        a, b = base.action_logits(obs(0), tokens), base.action_logits(obs(1), tokens)
        assert (a - b).abs().max() > 1e-3  # the image reaches the actions (openvla issue #346)
        outputs = []
        for seed in (0, 1):
            embeds, mask = base.prefix(obs(seed))
            outputs.append(base.llm()(inputs_embeds=embeds, attention_mask=mask).logits)
    torch.testing.assert_close(outputs[0][:, 0], outputs[1][:, 0], atol=0, rtol=0)  # BOS comes before the image
    assert (outputs[0][:, -1] - outputs[1][:, -1]).abs().max() > 1e-3


def test_teacher_forcing_equals_kv_cache_decoding(base):
    batch = obs(2)
    generator = torch.Generator().manual_seed(0)
    support = base.action_support

    def sample(logits):
        probs = torch.softmax(logits[:, support.start : support.stop], -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1) + support.start

    tokens, step_logits = base.decode(batch, sample)
    with torch.no_grad():
        forced = base.action_logits(batch, tokens)
    torch.testing.assert_close(step_logits, forced, atol=2e-5, rtol=1e-4)


def test_log_probs_match_sampled_tokens(base):
    batch = obs(4)
    sample = base.generate(batch, generator=torch.Generator().manual_seed(3))
    assert sample.tokens.shape == (3, D) and bool(((sample.tokens >= 256) & (sample.tokens < 512)).all())
    with torch.no_grad():
        logits = base.action_logits(batch, sample.tokens)
    logp = torch.log_softmax(logits[..., 256:512].double(), -1).gather(-1, (sample.tokens - 256)[..., None])[..., 0]
    torch.testing.assert_close(sample.log_probs.double(), logp, atol=1e-5, rtol=0)


def test_sampling_follows_the_action_token_distribution(base):
    # Sharpen the head so the first action token has a few likely values, then compare frequencies.
    policy = OpenVLAPolicy(base.config, base.text_tokenizer, "toy_dataset", weights="empty").eval()
    policy.load_state_dict(base.state_dict())
    with torch.no_grad():
        policy.llm().lm_head.weight.mul_(4.0)
    batch = ObsBatch(["stack the blocks"] * 400, image=images(5, 1).expand(400, -1, -1, -1).contiguous())
    sample = policy.generate(batch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(policy.action_logits(batch.select([0]), sample.tokens[:1])[0, 0, 256:512].double(), -1)
    counts = torch.bincount(sample.tokens[:, 0] - 256, minlength=256).double()
    top = probs.argsort(descending=True)[:3]
    assert probs[top].sum() > 0.5
    for t in top:
        sigma = float((probs[t] * (1 - probs[t]) / 400).sqrt())
        assert abs(float(counts[t] / 400 - probs[t])) < 4 * sigma + 1e-3


def test_padding_leaves_each_row_as_it_is_alone(base):
    batch = obs(6)
    tokens = some_tokens(base, 3, seed=2)
    with torch.no_grad():
        together = base.action_logits(batch, tokens)
        alone = torch.cat([base.action_logits(batch.select([i]), tokens[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


def test_actions_end_to_end_from_a_loaded_checkpoint(folder):
    policy = OpenVLAPolicy.from_pretrained(folder)  # default_unnorm_key was stored by save_pretrained
    assert policy.unnorm_key == "toy_dataset"
    q01, q99 = np.array(STATS["toy_dataset"]["action"]["q01"]), np.array(STATS["toy_dataset"]["action"]["q99"])
    for greedy in (True, False):
        actions = policy.act(obs(7), greedy=greedy, generator=torch.Generator().manual_seed(1))
        assert actions.shape == (3, D) and actions.dtype == np.float32
        assert np.all(actions[:, :6] >= q01[:6] - 1e-6) and np.all(actions[:, :6] <= q99[:6] + 1e-6)
        assert np.all(np.abs(actions[:, 6]) <= 1.0)  # the gripper is not un-normalised (mask false)


# ---------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_layout_and_bit_exact_round_trip(base, folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "openvla" and config["norm_stats"] == STATS
    assert config["default_unnorm_key"] == "toy_dataset" and (folder / "tokenizer.json").is_file()
    loaded = OpenVLAPolicy.from_pretrained(folder).eval()
    for name, tensor in base.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    tokens = some_tokens(base, 3)
    with torch.no_grad():
        assert torch.equal(loaded.action_logits(obs(8), tokens), base.action_logits(obs(8), tokens))


def _rewrite_shard(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = folder / min(index["weight_map"].values())
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name} | {k: shard.name for k in tensors}
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop(min(t)), "missing parameters: "),
        (lambda t: t.update({"vision_backbone.featurizer.extra_head.weight": torch.zeros(2)}), "unexpected parameters: vision_backbone.featurizer.extra_head.weight"),
        (lambda t: t.update({min(t): torch.zeros(3, 3)}), r"shape mismatches: .*: checkpoint \[3, 3\], expected"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_strict_loading_names_what_is_wrong(folder, tmp_path, edit, message):
    broken = shutil.copytree(folder, tmp_path / "broken")
    _rewrite_shard(broken, edit)
    with pytest.raises(ValueError, match=message):
        OpenVLAPolicy.from_pretrained(broken)


def test_bad_dataset_names_and_foreign_folders_fail_clearly(folder, tmp_path):
    with pytest.raises(ValueError, match="unnorm_key 'bridge_orig' has no statistics.*other_dataset, toy_dataset"):
        OpenVLAPolicy.from_pretrained(folder, unnorm_key="bridge_orig")
    foreign = tmp_path / "llama"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ValueError, match="not an OpenVLA checkpoint.*model_type 'llama'"):
        OpenVLAPolicy.from_pretrained(foreign)
    pickled = shutil.copytree(folder, tmp_path / "pickled", ignore=shutil.ignore_patterns("*.safetensors*"))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickled weights are never loaded"):
        OpenVLAPolicy.from_pretrained(pickled)
    with pytest.raises(RuntimeError, match="cannot fetch 'vla-cl-tests/no-such-openvla'.*--local-dir"):
        OpenVLAPolicy.from_pretrained("vla-cl-tests/no-such-openvla")  # offline here; unknown online
    no_default = OpenVLAConfig.tiny(norm_stats=STATS)
    with pytest.raises(ValueError, match="statistics for 2 datasets; choose one with unnorm_key"):
        OpenVLAPolicy(no_default, standin_tokenizer())


# ---------------------------------------------------------------------------------------- LoRA and pi0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecation notice inside peft
def test_lora_reference_is_pi0_exactly_and_adapters_save(folder, tmp_path):
    policy = OpenVLAPolicy.from_pretrained(folder)
    batch, tokens = obs(9), some_tokens(policy, 3, seed=4)
    with torch.no_grad():
        before = policy.action_logits(batch, tokens)
    n_params = sum(p.numel() for p in policy.parameters())
    trainable = policy.add_lora(rank=4, include_projector=True)
    assert trainable and all(".lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(3):
        loss = -policy.log_probs(batch, tokens).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lora = sum(p.numel() for p in trainable)
    assert sum(p.numel() for p in policy.parameters()) == n_params + lora  # no second copy of the weights
    with torch.no_grad():
        after = policy.action_logits(batch, tokens)
        with policy.reference() as pi0:
            reference = pi0.action_logits(batch, tokens)
        again = policy.action_logits(batch, tokens)
    assert torch.equal(reference, before)
    assert (after - before).abs().max() > 1e-3 and torch.equal(again, after)
    sample = policy.generate(batch, generator=torch.Generator().manual_seed(0))  # KV cache through peft
    untouched = OpenVLAPolicy.from_pretrained(folder)
    with policy.reference() as pi0:
        assert torch.equal(pi0.log_probs(batch, sample.tokens), untouched.log_probs(batch, sample.tokens))

    merged = OpenVLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "merged", merged=True))
    assert not merged.has_adapter
    with torch.no_grad():
        torch.testing.assert_close(merged.action_logits(batch, tokens), after, atol=1e-5, rtol=1e-4)
    restored = OpenVLAPolicy.from_pretrained(folder)
    restored.load_adapter(policy.save_adapter(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "language_model" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        assert torch.equal(restored.action_logits(batch, tokens), after)
        with restored.reference():
            assert torch.equal(restored.action_logits(batch, tokens), before)


def test_bfloat16_runs_on_cpu(folder, base):
    policy = OpenVLAPolicy.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert policy.dtype == torch.bfloat16 and policy.llm().model.rotary_emb.inv_freq.dtype == torch.float32
    batch, tokens = obs(10), some_tokens(base, 3)
    sample = policy.generate(batch, greedy=True)
    assert sample.actions.shape == (3, D) and torch.isfinite(sample.log_probs).all()
    with torch.no_grad():
        low, full = policy.action_logits(batch, tokens).float(), base.action_logits(batch, tokens)
    torch.testing.assert_close(low, full, atol=0.1, rtol=0.05)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_benchmark_tiny_smoke(capsys):
    spec = importlib.util.spec_from_file_location("openvla_gpu", REPO / "benchmarks" / "openvla_gpu.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--tiny", "--repeats", "1", "--batch-sizes", "1", "4"]) == 0
    out = capsys.readouterr().out
    assert "actions/s" in out and "Warm-up SFT step" in out and "disable_adapter" in out
    # One PPO update per batch size through updater.prepare and the loop's optimise, RL4VLA's memory beside it.
    ppo = out[out.index("LoRA PPO update"):out.index("Memory of pi0")]
    assert "value head" in ppo and "PPO update s/step" in ppo and "(theirs)" in ppo and "44.4 GB" in ppo
    rows = [line for line in ppo.splitlines() if line.startswith(("| 8 ", "| 32 "))]
    assert len(rows) == 2 and not any("out of memory" in row for row in rows)
