"""A checkpoint whose weights hold NaN or inf is refused where it is read, for every registered policy.

A run that diverged and saved its weights anyway leaves a checkpoint that loads and acts: every episode
fails and the evaluation reports 0 % success, as if the policy were merely weak. Here one tensor of a
saved checkpoint is poisoned in its safetensors file (the digest re-recorded, as a diverged run's own save
would have it), and ``vla-cl eval policy=FOLDER`` must stop with exit status 2, naming the file and the
tensor, before any episode runs. Every registered policy kind goes through this, plus OpenVLA's
fine-tuning checkpoint (LoRA adapters), its peft adapter folders and the training checkpoints' fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_cl.cli import main as cli
from vla_cl.policies import checkpoint as ckpt
from vla_cl.policies import get_policy_class, list_policies, load_policy, make_policy, save_policy
from vla_cl.tokenizer import ActionTokenizer, NormStats

Q01 = [-0.1, -0.1, -0.05, -0.2, -0.2, -0.3, -1.0]
Q99 = [0.1, 0.12, 0.05, 0.2, 0.25, 0.3, 1.0]
MASK = [True] * 6 + [False]


def small_policy(name: str):
    tokenizer = ActionTokenizer(vocab_size=256, n_bins=256, stats=NormStats(Q01, Q99, np.array(MASK)))
    return make_policy(name, tokenizer=tokenizer, **get_policy_class(name).tiny_config())


def tiny_openvla(lora: bool = False):
    from vla_cl.policies.openvla import OpenVLAPolicy

    policy = OpenVLAPolicy.tiny(norm_stats={"toy": {"action": {"q01": Q01, "q99": Q99, "mask": MASK}}},
                                unnorm_key="toy", seed=1)
    if lora:
        policy.add_lora(rank=4)
    return policy


# Each kind saved as a user's run saves it: the small policies in the generic format, OpenVLA without
# adapters in OpenVLA's sharded layout, OpenVLA with adapters as a fine-tuning checkpoint (adapters only).
KINDS = {
    "state_token": lambda: small_policy("state_token"),
    "small_vlm": lambda: small_policy("small_vlm"),
    "openvla": tiny_openvla,
    "openvla_lora": lambda: tiny_openvla(lora=True),
}


def test_every_registered_policy_kind_is_covered():
    assert set(list_policies()) <= set(KINDS), "a registered policy has no case in KINDS"


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def poison(folder: Path, value: float = float("nan")) -> tuple[Path, str]:
    """Set one entry of one floating-point tensor to ``value`` in the checkpoint's files; returns (file,
    tensor name). A generic checkpoint's recorded digest is updated to match."""
    file = weight_files(folder)[-1]
    tensors = load_file(str(file))
    name = max(n for n, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name].view(-1)[tensors[name].numel() // 2] = value
    save_file(tensors, str(file), metadata={"format": "pt"})
    config_path = folder / ckpt.CONFIG_FILE
    config = json.loads(config_path.read_text())
    if config.get("format") == ckpt.FORMAT:
        config["weights_sha256"] = ckpt._sha256(file)
        config_path.write_text(json.dumps(config))
    return file, name


@pytest.fixture(params=list(KINDS))
def saved(request, tmp_path) -> Path:
    torch.manual_seed(0)
    return save_policy(KINDS[request.param](), tmp_path / request.param)


def test_a_clean_checkpoint_still_loads(saved):
    load_policy(saved)  # the check refuses only what is bad


def test_eval_refuses_a_nan_checkpoint_with_exit_2_naming_file_and_tensor(saved, tmp_path, capsys):
    file, name = poison(saved)
    out = tmp_path / "eval"
    assert cli(["eval", f"policy={saved}", "suite=smoke", "episodes=1", "progress=false", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and str(file) in err and f"tensor {name} has 1 NaN" in err, err
    assert not (out / "result.json").exists()  # refused before any episode


def test_infinite_weights_are_refused_too(saved):
    _, name = poison(saved, float("-inf"))
    with pytest.raises(ValueError, match=rf"{name} has 0 NaN and 1 infinite values"):
        load_policy(saved)


def test_peft_adapter_folders_are_checked(tmp_path):
    policy = tiny_openvla(lora=True)
    folder = policy.save_adapter(tmp_path / "adapters")
    weights = folder / "language_model" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = min(tensors)
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    fresh = tiny_openvla()
    with pytest.raises(ValueError, match=rf"{weights}.*tensor {name} has 1 NaN"):
        fresh.load_adapter(folder)
    assert not fresh.has_adapter


def test_a_nan_training_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    from vla_cl.updaters.checkpoint import POLICY_FOLDER, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    policy = small_policy("state_token")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    root = tmp_path / "checkpoints"
    good = {k: v.clone() for k, v in policy.state_dict().items()}
    save_checkpoint(root, 1, policy, optimizer, {"step": 1})
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    newest = save_checkpoint(root, 2, policy, optimizer, {"step": 2})
    file, name = poison(newest / POLICY_FOLDER)

    resumed = small_policy("state_token")
    record = load_checkpoint(root, resumed, torch.optim.AdamW(resumed.parameters(), lr=1e-3))
    assert record["iteration"] == 1
    assert all(torch.equal(v, good[k]) for k, v in resumed.state_dict().items())
    printed = capsys.readouterr().out
    assert f"checkpoint {newest} is unreadable ({file} holds non-finite weights: tensor {name}" in printed
    assert "falling back to iter-000001" in printed
