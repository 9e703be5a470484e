"""OpenVLA inside the training loop: the Bridge scenes' conventions from the checkpoint, a tiny OpenVLA trained
with REINFORCE on the carrot scene, and the refusals that come before any episode."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_ASSETS, simulation_required
from vla_cl.cli import main
from vla_cl.policies import load_policy
from vla_cl.policies.base import ObsBatch
from vla_cl.policies.openvla import OpenVLAPolicy

# OpenVLA-7B's bridge_orig statistics (its HF config.json); the tiny policy acts with them like the real one.
BRIDGE = {"bridge_orig": {"action": {
    "q01": [-0.02872725307941437, -0.04170349963009357, -0.026093858778476715, -0.08092105075716972,
            -0.09288699507713317, -0.20718276381492615, 0.0],
    "q99": [0.028309678435325586, 0.040855254605412394, 0.040161586627364146, 0.08192047759890528,
            0.07792850524187081, 0.20382574498653397, 1.0],
    "mask": [True] * 6 + [False]}}}
CARROT = "simpler/widowx_carrot_on_plate"


def bridge_policy(seed: int = 0) -> OpenVLAPolicy:
    return OpenVLAPolicy.tiny(norm_stats=BRIDGE, unnorm_key="bridge_orig", seed=seed)


def test_a_bridge_orig_checkpoint_acts_in_simplerenvs_convention(tmp_path):
    """From the checkpoint's statistics alone: Euler deltas become axis-angle, the gripper +-1."""
    from vla_cl.actions import bridge_action

    policy = OpenVLAPolicy.from_pretrained(bridge_policy().save_pretrained(tmp_path / "ckpt"))
    obs = ObsBatch(["put carrot on plate"] * 4, image=torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8))
    sample = policy.generate(obs, generator=torch.Generator().manual_seed(0))
    raw = policy.tokenizer.unnormalize(sample.normalized)
    np.testing.assert_allclose(sample.actions, bridge_action(raw), atol=1e-6)
    assert set(np.unique(sample.actions[:, 6])) <= {-1.0, 1.0}
    other = OpenVLAPolicy.tiny(norm_stats={"toy": BRIDGE["bridge_orig"]}, unnorm_key="toy")
    plain = other.generate(obs, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(plain.actions, other.tokenizer.unnormalize(plain.normalized), atol=1e-6)


def test_a_warmed_up_pi0_is_the_reference_of_the_next_adapters(tmp_path):
    """Fine-tuning from a LoRA warm-up merges its adapters: with the new adapters disabled the policy computes the
    warmed-up pi0 (not the checkpoint it was warmed up from), and a saved run rebuilds itself through pi0's folder."""
    obs = ObsBatch(["put carrot on plate"] * 3, image=torch.randint(0, 256, (3, 28, 28, 3), dtype=torch.uint8))
    tokens = torch.randint(256, 512, (3, 7))
    base = bridge_policy(seed=1)
    base_logits = base.action_logits(obs, tokens)
    base.add_lora(rank=4)
    with torch.no_grad():  # a warm-up that moved the adapters off zero
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    warm = load_policy(base.save_pretrained(tmp_path / "warm"))
    warm_logits = warm.action_logits(obs, tokens)
    assert (warm_logits - base_logits).abs().max() > 1e-3  # the warm-up changed the policy
    warm.prepare_finetuning(lora_rank=2)
    assert warm.config_dict()["base"] == {"kind": "merged", "name_or_path": str((tmp_path / "warm").resolve())}
    with warm.reference():
        torch.testing.assert_close(warm.action_logits(obs, tokens), warm_logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for name, p in warm.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
    tuned = warm.action_logits(obs, tokens)
    again = load_policy(warm.save_pretrained(tmp_path / "tuned"))
    torch.testing.assert_close(again.action_logits(obs, tokens), tuned, atol=1e-5, rtol=1e-5)
    with again.reference():
        torch.testing.assert_close(again.action_logits(obs, tokens), warm_logits, atol=1e-5, rtol=1e-5)


def test_refusals_before_any_episode(tmp_path, capsys, monkeypatch):
    folder = bridge_policy().save_pretrained(tmp_path / "ckpt")
    common = [f"task={CARROT}", "iterations=1", f"out_dir={tmp_path / 'run'}"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["train", "updater=reinforce", "init=openvla/openvla-7b-not-cached", *common]) == 2
    assert time.perf_counter() - start < 30  # no retries
    err = capsys.readouterr().err
    assert "openvla/openvla-7b-not-cached" in err and "local checkpoint folder" in err
    assert main(["train", "updater=reinforce", "policy=openvla", *common]) == 2  # no init, no tiny preset
    assert "pass init=" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no statistics"):
        OpenVLAPolicy.from_pretrained(folder, unnorm_key="fractal20220817_data")
    # an adapter whose base checkpoint was replaced by another network
    import shutil

    from vla_cl.policies.openvla.config import OpenVLAConfig
    from vla_cl.policies.openvla.processing import standin_tokenizer

    trained = OpenVLAPolicy.from_pretrained(folder)
    trained.prepare_finetuning(lora_rank=2)
    adapter = trained.save_pretrained(tmp_path / "adapter")
    assert load_policy(adapter).has_adapter
    shutil.rmtree(folder)
    config = OpenVLAConfig.tiny(norm_stats=BRIDGE, image_size=42, prompt_suffix_token_id=3)
    OpenVLAPolicy(config, standin_tokenizer(), "bridge_orig").save_pretrained(folder)
    with pytest.raises(ValueError, match="architecture differs"):
        load_policy(adapter)


@pytest.mark.slow
@pytest.mark.sim
def test_tiny_openvla_learns_with_reinforce_on_the_carrot_scene(tmp_path, monkeypatch, needs_sim):
    """The whole path on a Bridge scene at low resolution: image observations by default, bridge_orig
    post-processing from the checkpoint, LoRA, REINFORCE, a small fine-tuning checkpoint that reloads."""
    if not simulation_required():
        pytest.skip("VLA_CL_VULKAN=skip")
    monkeypatch.setenv("MS_ASSET_DIR", str(SHARED_ASSETS))
    init = bridge_policy().save_pretrained(tmp_path / "base")
    out = tmp_path / "run"
    start = time.perf_counter()
    assert main(["train", "updater=reinforce", f"task={CARROT}", f"init={init}", "lora_rank=4", "iterations=2",
                 "updater.episodes=2", "num_envs=1", "max_episode_steps=4", "eval_episodes=1", "probe_episodes=1",
                 "progress=false", "tensorboard=false", f"out_dir={out}"]) == 0
    seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1, 2] and lines[-1]["env_steps"] == 16
    assert np.isfinite(lines[-1]["train/loss"]) and lines[-1]["kl/mean"] >= 0
    print(f"[tiny OpenVLA, carrot scene] {lines[-1]['env_steps']} training env steps, run {seconds:.1f} s")
    trained = load_policy(out / "artifacts" / "policy")
    assert trained.has_adapter and trained.unnorm_key == "bridge_orig"
    assert sum(f.stat().st_size for f in (out / "artifacts" / "policy").iterdir()) < 2_000_000


@pytest.mark.parametrize("preset", ["openvla_bridge_carrot", "openvla_bridge_spoon", "openvla_bridge_stack",
                                    "openvla_bridge_eggplant"])
def test_the_openvla_bridge_presets_compose(preset, monkeypatch):
    """Each preset is a valid train config (with the 7B checkpoint swapped for a tiny random OpenVLA, since
    the hub is out of reach here), with RL4VLA's settings where they apply."""
    from vla_cl.cli.compose import compose
    from vla_cl.updaters.command import train_schema

    config = compose("train", train_schema(), [f"preset={preset}", "init=null", "policy_preset=tiny"])
    assert config.policy == "openvla" and config.task.startswith("simpler/") and config.lora_rank == 32
    updater = config.updater
    assert updater.name == "ppo" and updater.optim.lr == pytest.approx(1e-4) and updater.optim.update_epochs == 1
    assert updater.kl_coef == 0.0 and config.device.startswith("cuda")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="cannot fetch 'openvla/openvla-7b'"):
        compose("train", train_schema(), [f"preset={preset}"])
