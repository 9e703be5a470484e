"""Every updater through one contract: config validation, bad command-line input, a smoke run on each
CPU-scale policy, the direction each loss moves the policy, rollout/demo data, and exact resume.

Most runs use ``toy/Reach-v0`` (tests/updater_toy.py), a seconds-fast task with the VLAEnv interface;
``test_training_through_the_simulator`` runs SFT and REINFORCE through ManiSkill3's PickCube.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.updater_toy import TASK, register_toy, toy_demos
from vla_cl.cli import main as cli
from vla_cl.envs import make
from vla_cl.envs.vector import make_vector
from vla_cl.policies import ObsBatch, get_policy_class, list_policies, load_policy
from vla_cl.updaters.base import OptimizerConfig
from vla_cl.updaters.checkpoint import (
    optimizer_state,
    restore_optimizer,
    truncate_metrics,
)
from vla_cl.updaters.data import DemoStream, Rollouts, collect_rollouts
from vla_cl.updaters.loop import WALL_CLOCK, optimise
from vla_cl.updaters.optim import lr_factor, make_optimizer
from vla_cl.updaters.registry import get_updater_class, list_updaters, make_updater
from vla_cl.updaters.supervised import acceptable_token_targets

REPO = Path(__file__).resolve().parent.parent
UPDATERS = ["distill", "grpo", "oracle_sft", "ppo", "reinforce", "rft", "sft", "sft_kl"]
POLICIES = ["state_token", "small_vlm"]  # the CPU-scale policies, trained whole
REGISTERED = list_policies()  # every registered policy goes through the command-line contract (OpenVLA tiny)
DEMO_UPDATERS = {"sft", "sft_kl", "oracle_sft"}
BASE = ["task=" + TASK, "policy_preset=tiny", "num_envs=2", "eval_episodes=2", "probe_episodes=1", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def toy_task():
    register_toy()


@pytest.fixture(scope="module")
def demos_dir(tmp_path_factory):
    return toy_demos(tmp_path_factory.mktemp("demos"), n_episodes=6, obs_mode="both", image_size=32)


@pytest.fixture(scope="module")
def openvla_demos(tmp_path_factory):
    """Demonstrations at the tiny OpenVLA's own input side (train refuses images of another size)."""
    side = get_policy_class("openvla").fresh_observations("tiny")[1]
    return toy_demos(tmp_path_factory.mktemp("openvla_demos"), n_episodes=6, obs_mode="both", image_size=side)


def toy_env(num_envs=1, obs_mode="state", **options):
    return make_vector(TASK, num_envs, obs_mode=obs_mode, image_size=32, **options)


def toy_policy(name="state_token", value_head=True, seed=0):
    env = make(TASK)
    return get_policy_class(name).for_task(state_dim=6, action_stats=env.action_stats, preset="tiny", seed=seed,
                                           instructions=[env.task_spec.instruction], value_head=value_head)


def metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "artifacts" / "policy" / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ configs


def test_the_registry_lists_every_method():
    assert list_updaters() == UPDATERS


@pytest.mark.parametrize("name", UPDATERS)
def test_every_config_validates_its_shared_fields(name):
    cls = get_updater_class(name)
    assert cls.name == name and cls.config_class().optim.lr > 0 and cls.config_class().name == name
    for field, value in [("lr", -1.0), ("lr", 0.0), ("grad_clip", -1.0), ("minibatches", 0), ("update_epochs", 0),
                         ("schedule", "step"), ("warmup_steps", -1)]:
        with pytest.raises(ValueError, match=f"invalid value for updater.optim.{field}"):
            make_updater(name, optim={field: value})
    with pytest.raises(ValueError, match="invalid value for updater.kl_coef"):
        make_updater(name, kl_coef=-0.1)
    with pytest.raises(ValueError, match="grad_accum"):
        make_updater(name, optim={"minibatches": 4, "update_epochs": 1, "grad_accum": 3})
    with pytest.raises(ValueError, match="invalid value for updater.optim.momentum"):
        make_updater(name, optim={"momentum": 0.9})  # the optimiser's fields, named where they are nested


def test_every_updater_config_is_flat_with_its_own_defaults():
    """No updater config inherits from another: each holds the shared optimiser config, with the defaults
    written where the updater is defined (PPO's 3e-4 and 4 x 4 minibatch passes, SFT's 4 minibatches)."""
    for name in UPDATERS:
        config_class = get_updater_class(name).config_class
        assert config_class.__bases__ == (object,), name
        assert isinstance(config_class().optim, OptimizerConfig)
    ppo, sft, rft = (get_updater_class(n).config_class().optim for n in ("ppo", "sft", "rft"))
    assert (ppo.lr, ppo.minibatches, ppo.update_epochs) == (3e-4, 4, 4)
    assert (sft.lr, sft.minibatches, rft.minibatches) == (1e-4, 4, 1)
    changed = make_updater("ppo", optim={"lr": 1e-3}).config.optim
    assert changed.lr == 1e-3 and changed.minibatches == 4  # the rest keeps ppo's defaults


def test_an_updater_registered_later_reaches_the_command_line(tmp_path, capsys):
    """The command line's updater options are built from the registry when used, not when imported."""
    import dataclasses as dc

    from vla_cl.updaters.base import OptimizerConfig
    from vla_cl.updaters.registry import UPDATERS as TABLE
    from vla_cl.updaters.registry import options_dataclass, register_updater
    from vla_cl.updaters.supervised import RFT

    @dc.dataclass
    class LateConfig:
        name: str = "late_rft"
        optim: OptimizerConfig = dc.field(default_factory=OptimizerConfig)
        episodes: int = 8
        kl_coef: float = 0.0
        smoothing: float = 0.25

    class LateRFT(RFT):
        name, config_class = "late_rft", LateConfig

    register_updater("late_rft", LateRFT)
    try:
        assert "smoothing" in {f.name for f in dc.fields(options_dataclass())}
        out = tmp_path / "late"
        assert cli(["train", "updater.name=late_rft", "updater.smoothing=0.5", "updater.episodes=2", *BASE,
                    "iterations=1", f"out_dir={out}"]) == 0
        assert "smoothing: 0.5" in (out / "config.yaml").read_text()
    finally:
        TABLE.unregister("late_rft")  # leave the table as the other tests expect it
        options_dataclass.cache_clear()


@pytest.mark.parametrize("name, field, value", [
    ("ppo", "clip_eps", 0.0), ("ppo", "clip_eps", 1.5), ("ppo", "gae_lambda", 1.5), ("ppo", "gamma", -0.1),
    ("ppo", "value_clip", 0.0), ("ppo", "vf_coef", -1.0), ("ppo", "episodes", 0), ("grpo", "group_size", 1),
    ("reinforce", "token_clip_eps", -0.2), ("grpo", "token_clip_eps", 1.0), ("sft_kl", "kl_coef", 0.0),
    ("oracle_sft", "window", -1),
    ("distill", "targets", "logits"), ("sft", "batch_size", 2),
])
def test_method_specific_fields_are_validated(name, field, value):
    with pytest.raises(ValueError, match=f"invalid value for updater.{field}"):
        make_updater(name, **{field: value})


def test_grpo_episodes_must_fill_whole_groups():
    with pytest.raises(ValueError, match="invalid value for updater.episodes.*multiple of group_size"):
        make_updater("grpo", episodes=6, group_size=4)


def cli_error(capsys, tmp_path, *args) -> str:
    out = tmp_path / "never"
    assert cli(["train", *BASE, f"out_dir={out}", *args]) == 2
    assert not out.exists()  # refused before any work
    return capsys.readouterr().err


def test_bad_command_line_input_fails_before_any_work_naming_the_field(capsys, tmp_path, demos_dir):
    assert "updater.optim.lr" in cli_error(capsys, tmp_path, "updater=ppo", "updater.optim.lr=-1")
    assert "updater.clip_eps" in cli_error(capsys, tmp_path, "updater=ppo", "updater.clip_eps=0")
    err = cli_error(capsys, tmp_path, "updater=sft", f"demos={demos_dir}", "updater.clip_eps=0.1")
    assert "no option 'clip_eps'" in err
    assert "invalid value for demos" in cli_error(capsys, tmp_path, "updater=sft")
    assert "does not exist" in cli_error(capsys, tmp_path, "updater=sft", f"demos={tmp_path / 'missing'}")
    assert "invalid value for demos" in cli_error(capsys, tmp_path, "updater=ppo", f"demos={demos_dir}")
    assert "invalid value for teacher" in cli_error(capsys, tmp_path, "updater=distill")
    assert "invalid value for task" in cli_error(capsys, tmp_path, "updater=ppo", "task=maniskill/Nope-v9")
    assert "invalid value for init" in cli_error(capsys, tmp_path, "updater=ppo", f"init={tmp_path}")
    assert "unknown updater" in cli_error(capsys, tmp_path, "updater.name=adam")


def test_empty_foreign_or_mismatched_demonstrations_are_refused(capsys, tmp_path, demos_dir):
    from safetensors.numpy import load_file as load_np
    from safetensors.numpy import save_file as save_np

    empty = tmp_path / "empty"
    empty.mkdir()
    arrays = {k: v[:0] for k, v in load_np(str(Path(demos_dir) / "demos.safetensors")).items()}
    save_np(arrays, str(empty / "demos.safetensors"))
    (empty / "demos.json").write_text((Path(demos_dir) / "demos.json").read_text())
    assert "empty" in cli_error(capsys, tmp_path, "updater=sft", f"demos={empty}")

    state_only = toy_demos(tmp_path / "state_only", n_episodes=2, obs_mode="state")
    err = cli_error(capsys, tmp_path, "updater=sft", f"demos={state_only}", "policy=small_vlm")
    assert "invalid value for demos" in err and "image" in err

    err = cli_error(capsys, tmp_path, "updater=sft", f"demos={demos_dir}", "task=maniskill/PickCube-v1")
    assert "invalid value for demos" in err and "toy/Reach-v0" in err

    from vla_cl.policies import make_policy
    from vla_cl.tokenizer import ActionTokenizer

    six = make_policy("state_token", tokenizer=ActionTokenizer(256, 256), state_dim=6, action_dim=6,
                      instructions=["reach the green target"], hidden=[8])
    six.save_pretrained(tmp_path / "six")
    err = cli_error(capsys, tmp_path, "updater=sft", f"demos={demos_dir}", f"init={tmp_path / 'six'}")
    assert "invalid value for demos" in err and "6-D" in err


# ------------------------------------------------------------------------------------------ smoke runs


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, demos_dir):
    """A saved policy of each kind to distil from (a fresh one: the contract, not the skill, is tested)."""
    folder = tmp_path_factory.mktemp("teachers")
    return {name: toy_policy(name, value_head=False, seed=7).save_pretrained(folder / name) for name in REGISTERED}


@pytest.mark.parametrize("policy", REGISTERED)
@pytest.mark.parametrize("name", UPDATERS)
def test_every_updater_trains_every_registered_policy(name, policy, tmp_path, demos_dir, openvla_demos, teachers):
    out = tmp_path / "run"
    extra = [f"demos={openvla_demos if policy == 'openvla' else demos_dir}"] if name in DEMO_UPDATERS else []
    extra += [f"teacher={teachers[policy]}"] if name == "distill" else []
    assert cli(["train", f"updater={name}", f"policy={policy}", *BASE, "iterations=2", f"out_dir={out}", "lora_rank=4",
                "updater.episodes=4" if name not in DEMO_UPDATERS else "updater.batch_size=16", *extra]) == 0
    lines = metrics(out)
    assert [line["iteration"] for line in lines] == [0, 1, 2]
    assert "eval/success_rate" in lines[0] and "kl/mean" in lines[0] and lines[0]["kl/mean"] == 0.0
    assert lines[-1]["step"] == 2 * make_updater(name).config.optim.steps_per_iteration
    if lines[-1]["batch_rows"]:  # rft and distill-only-success can draw an empty batch
        assert math.isfinite(lines[-1]["train/loss"]) and lines[-1]["kl/mean"] >= 0.0
    trained = load_policy(out / "artifacts" / "policy")
    assert trained.name == policy
    assert list((out / "artifacts" / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updater"] == name and summary["final"]["iteration"] == 2


# ------------------------------------------------------------------------------------------ directions


def two_outcomes(policy, seed=0) -> tuple[Rollouts, torch.Tensor, torch.Tensor]:
    """Two one-step episodes from the same state: action a+ succeeded (reward 1), a- did not."""
    env = make(TASK, obs_mode="both", image_size=32)
    obs, _ = env.reset(seed=seed)
    batch = ObsBatch.from_observations([obs, obs])
    g = torch.Generator().manual_seed(seed)
    good, bad = torch.randint(0, 256, (2, policy.action_dim), generator=g)
    rollouts = Rollouts(
        obs=batch, tokens=torch.stack([good, bad]), reward=torch.tensor([1.0, 0.0]),
        terminated=torch.tensor([True, False]), truncated=torch.tensor([False, True]),
        episode=torch.tensor([0, 1]), final_obs=batch, success=torch.tensor([True, False]),
        returns=torch.tensor([1.0, 0.0]), seeds=torch.tensor([seed, seed]))
    return rollouts, good, bad


def action_log_prob(policy, obs, tokens) -> float:
    with torch.no_grad():
        return float(policy.log_probs(obs, tokens[None]).sum())


def train_on(policy, updater, data, steps=5) -> None:
    policy.mark_reference()
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    rng = np.random.default_rng(0)
    total = steps * updater.config.optim.steps_per_iteration
    for i in range(steps):
        optimise(policy, updater, updater.prepare(policy, data), optimizer, i * updater.config.optim.steps_per_iteration,
                 total, rng, torch.device("cpu"))


@pytest.mark.parametrize("name, options", [
    ("ppo", {"optim": {"minibatches": 1, "update_epochs": 2}}), ("reinforce", {}),
    ("grpo", {"group_size": 2, "episodes": 2}), ("rft", {}),
])
@pytest.mark.parametrize("policy_name", POLICIES)
def test_rl_raises_the_probability_of_the_advantaged_action(name, options, policy_name):
    policy = toy_policy(policy_name)
    rollouts, good, bad = two_outcomes(policy)
    obs = rollouts.obs.select([0])
    before = action_log_prob(policy, obs, good), action_log_prob(policy, obs, bad)
    train_on(policy, make_updater(name, **{**options, "optim": {"lr": 3e-3, **options.get("optim", {})}}), rollouts)
    after = action_log_prob(policy, obs, good), action_log_prob(policy, obs, bad)
    assert after[0] > before[0] + 0.5
    if name != "rft":  # rft ignores failures instead of pushing them down
        assert after[1] < before[1]


def test_ppo_bootstraps_the_truncated_episode_and_not_the_terminated_one():
    policy = toy_policy()
    rollouts, _, _ = two_outcomes(policy)
    updater = make_updater("ppo", gamma=0.5, gae_lambda=1.0, normalize_advantages=False)
    batch = updater.prepare(policy, rollouts)
    with torch.no_grad():
        v = policy.value(rollouts.obs)
    # episode 0 terminated: R = 1; episode 1 truncated: R = 0 + 0.5 V(final obs) (here the same state)
    assert batch.returns.tolist() == pytest.approx([1.0, 0.5 * float(v[1])], abs=1e-6)
    assert batch.advantages.tolist() == pytest.approx([1.0 - float(v[0]), -0.5 * float(v[1])], abs=1e-6)


def demo_log_likelihood(policy, stream: DemoStream) -> float:
    with torch.no_grad():
        return float(policy.log_probs(stream.obs, stream.tokens).sum(-1).mean())


@pytest.mark.parametrize("policy_name", POLICIES)
def test_sft_raises_the_likelihood_of_the_demonstrations(policy_name, demos_dir):
    from vla_cl.envs.demos import load_demos

    policy = toy_policy(policy_name, value_head=False)
    stream = DemoStream(load_demos(demos_dir), policy, batch_size=16, seed=0)
    before = demo_log_likelihood(policy, stream)
    updater = make_updater("sft", optim={"lr": 3e-3, "minibatches": 2}, batch_size=16)
    policy.mark_reference()
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    for i in range(6):
        optimise(policy, updater, stream.batch(i), optimizer, 2 * i, 12, np.random.default_rng(i), torch.device("cpu"))
    assert demo_log_likelihood(policy, stream) > before + 1.0


def probe_kl(policy, obs, tokens) -> float:
    from vla_cl.kl import forward_kl

    with torch.no_grad():
        logits = policy.action_logits(obs, tokens)
        with policy.reference():
            base = policy.action_logits(obs, tokens)
    return float(forward_kl(base, logits).sum(-1).mean())


def test_the_kl_term_pulls_back_towards_pi0():
    policy = toy_policy()
    rollouts, _, _ = two_outcomes(policy)
    rollouts.returns = torch.tensor([0.0, 0.0])  # no advantage: only the KL term has a gradient
    policy.mark_reference()
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    start = probe_kl(policy, rollouts.obs, rollouts.tokens)
    updater = make_updater("reinforce", optim={"lr": 1e-2}, kl_coef=1.0)
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    for i in range(5):
        optimise(policy, updater, updater.prepare(policy, rollouts), optimizer, i, 5, np.random.default_rng(i),
                 torch.device("cpu"))
    assert probe_kl(policy, rollouts.obs, rollouts.tokens) < 0.5 * start


def test_sft_kl_stays_closer_to_pi0_than_sft(demos_dir):
    from vla_cl.envs.demos import load_demos

    kls = {}
    for name in ("sft", "sft_kl"):
        policy = toy_policy(value_head=False)
        stream = DemoStream(load_demos(demos_dir), policy, batch_size=16, seed=0)
        updater = make_updater(name, optim={"lr": 1e-2, "minibatches": 1}, batch_size=16,
                               **({"kl_coef": 1.0} if name == "sft_kl" else {}))
        policy.mark_reference()
        optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
        for i in range(20):
            optimise(policy, updater, stream.batch(i), optimizer, i, 20, np.random.default_rng(i), torch.device("cpu"))
        kls[name] = probe_kl(policy, stream.obs, stream.tokens)
    assert 0 < kls["sft_kl"] < 0.2 * kls["sft"]


def test_acceptable_token_targets_by_hand():
    base = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0]]])
    targets = acceptable_token_targets(base, torch.tensor([[2]]), window=1)
    e = np.exp([1.0, 2.0, 3.0])
    assert targets[0, 0].tolist() == pytest.approx([0.0, *(e / e.sum()), 0.0])
    one_hot = acceptable_token_targets(base, torch.tensor([[4]]), window=0)
    assert one_hot[0, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]  # window 0 is plain SFT
    edge = acceptable_token_targets(base, torch.tensor([[0]]), window=2)  # the window stops at the support
    assert edge[0, 0, 3:].tolist() == [0.0, 0.0] and float(edge.sum()) == pytest.approx(1.0)


def test_oracle_sft_keeps_pi0s_odds_inside_the_window(demos_dir):
    """Inside the acceptable window the oracle target keeps pi0's relative odds; plain SFT does not."""
    from vla_cl.envs.demos import load_demos

    results = {}
    for name in ("oracle_sft", "sft"):
        policy = toy_policy(value_head=False)
        stream = DemoStream(load_demos(demos_dir), policy, batch_size=32, seed=0)
        updater = make_updater(name, optim={"lr": 1e-2, "minibatches": 1}, batch_size=32,
                               **({"window": 3} if name == "oracle_sft" else {}))
        policy.mark_reference()
        optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
        batch = stream.batch(0)
        for i in range(60):
            optimise(policy, updater, updater.prepare(policy, batch), optimizer, i, 60, np.random.default_rng(i),
                     torch.device("cpu"))
        with torch.no_grad():
            logits = policy.action_logits(batch.obs, batch.tokens)
            with policy.reference():
                base = policy.action_logits(batch.obs, batch.tokens)
        target = acceptable_token_targets(base, batch.tokens, 3)
        mass = (torch.softmax(logits, -1) * (target > 0)).sum(-1).mean()
        inside = torch.log_softmax(logits.masked_fill(target == 0, float("-inf")), -1)
        gap = (torch.where(target > 0, target * (target.clamp_min(1e-30).log() - inside), 0)).sum(-1).mean()
        results[name] = float(mass), float(gap)
    assert results["oracle_sft"][0] > 0.9  # learned to act acceptably...
    assert results["oracle_sft"][1] < 0.01 * results["sft"][1]  # ...keeping pi0's odds among acceptable tokens


def test_distill_moves_towards_the_teacher():
    teacher = toy_policy(value_head=False, seed=7)
    student = toy_policy(value_head=False, seed=0)
    env = toy_env(2)
    rollouts = collect_rollouts(teacher, env, 4, seed=0, generator=torch.Generator().manual_seed(0), with_probs=True)
    env.close()

    def kl_to_teacher() -> float:
        with torch.no_grad():
            log_q = torch.log_softmax(student.action_logits(rollouts.obs, rollouts.tokens), -1)
        p = rollouts.probs
        return float((p * (p.log() - log_q)).sum(-1).sum(-1).mean())

    before = kl_to_teacher()
    train_on(student, make_updater("distill", optim={"lr": 3e-3}), rollouts, steps=10)
    assert kl_to_teacher() < 0.7 * before


def test_actor_and_critic_gradients_stay_apart():
    from vla_cl.updaters.losses import ppo_policy_loss, value_loss

    for name in POLICIES:
        policy = toy_policy(name)
        rollouts, _, _ = two_outcomes(policy)
        obs, tokens = rollouts.obs, rollouts.tokens
        log_probs = policy.log_probs(obs, tokens).sum(-1)
        ppo_policy_loss(log_probs, log_probs.detach() - 0.1, torch.tensor([1.0, -1.0]))["loss"].backward()
        assert all(p.grad is None or not p.grad.any() for p in policy.critic.parameters())
        policy.zero_grad(set_to_none=True)
        value_loss(policy.value(obs), torch.tensor([1.0, 0.0]))["loss"].backward()
        actor_head = policy.actor if name == "state_token" else policy.head  # small_vlm shares its trunk
        assert all(p.grad is None or not p.grad.any() for p in actor_head.parameters())
        if name == "state_token":  # a separate critic: no actor parameter at all
            assert all(p.grad is None for p in [*policy.actor.parameters(), *policy.instruction.parameters()])


def test_a_value_head_can_be_added_to_pi0():
    policy = toy_policy(value_head=False)
    grown = policy.with_value_head(seed=0)
    assert grown.has_value_head and not policy.has_value_head
    obs = two_outcomes(policy)[0].obs
    tokens = torch.zeros(2, 7, dtype=torch.long)
    assert torch.equal(grown.action_logits(obs, tokens), policy.action_logits(obs, tokens))


# ------------------------------------------------------------------------------------------ data


def test_rollouts_hold_whole_episodes_with_their_final_observations():
    policy = toy_policy()
    env = toy_env(2)
    rollouts = collect_rollouts(policy, env, 5, seed=10, generator=torch.Generator().manual_seed(0), repeats=2)
    env.close()
    assert rollouts.num_episodes == 10 and rollouts.seeds.tolist() == [10, 11, 12, 13, 14] * 2
    ends = rollouts.episode_end
    assert bool(ends[-1]) and (rollouts.episode[1:] != rollouts.episode[:-1]).tolist() == ends[:-1].tolist()
    for e in range(10):
        rows = torch.nonzero(rollouts.episode == e).reshape(-1)
        # replaying the decoded, clipped actions from the origin gives the final (pre-reset) position
        actions = policy.tokenizer.unnormalize(policy.tokenizer.decode(rollouts.tokens[rows].numpy()))
        moved = np.clip(actions, -0.1, 0.1)[:, :3].sum(0)
        assert rollouts.final_obs.state[e, :3].numpy() == pytest.approx(moved, abs=1e-5)
        last = rows[-1]
        assert bool(rollouts.terminated[last]) == bool(rollouts.success[e]) != bool(rollouts.truncated[last])
        assert rollouts.reward[rows].tolist() == [0.0] * (len(rows) - 1) + [float(rollouts.success[e])]
        if rollouts.truncated[last]:
            assert len(rows) == 4  # the toy task's time limit
    first = lambda e: rollouts.obs.state[torch.nonzero(rollouts.episode == e)[0, 0]]
    assert all(torch.equal(first(e), first(e + 5)) for e in range(5))  # repeats start from the same states


def test_demo_batches_are_a_pure_function_of_seed_and_index(demos_dir):
    from vla_cl.envs.demos import load_demos

    demos = load_demos(demos_dir)
    policy = toy_policy(value_head=False)
    a, b = DemoStream(demos, policy, 5, seed=3), DemoStream(demos, policy, 5, seed=3)
    assert torch.equal(a.batch(7).tokens, b.batch(7).tokens) and torch.equal(a.batch(7).obs.state, b.batch(7).obs.state)
    epoch = torch.cat([a.batch(i).obs.state for i in range(len(a) // 5)])
    assert len(torch.unique(epoch, dim=0)) == len(epoch)  # no row twice within an epoch
    tokens = policy.tokenizer.encode(policy.tokenizer.normalize(demos.arrays["action"]))
    assert torch.equal(a.tokens, torch.as_tensor(tokens))


# ------------------------------------------------------------------------------------------ schedule, state


def test_lr_schedules_by_hand():
    assert [lr_factor("constant", s, 4) for s in range(4)] == [1.0] * 4
    assert [lr_factor("linear", s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_factor("cosine", s, 4) for s in range(4)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    assert [lr_factor("cosine", s, 6, warmup=2) for s in range(6)] == pytest.approx(
        [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0, 4)


def test_optimizer_state_round_trips_exactly():
    policy = toy_policy()
    updater = make_updater("ppo")
    optimizer = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    policy.log_probs(two_outcomes(policy)[0].obs, torch.zeros(2, 7, dtype=torch.long)).sum().backward()
    optimizer.step()
    tensors, scalars = optimizer_state(optimizer)
    fresh = make_optimizer(policy.trainable_parameters(), updater.config.optim)
    restore_optimizer(fresh, tensors, json.loads(json.dumps(scalars)))
    again, _ = optimizer_state(fresh)
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)


def test_truncate_metrics_keeps_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in range(5)) + '{"iteration": 5, "lo')
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1, 2]


# ------------------------------------------------------------------------------------------ exact resume


class Crash(Exception):
    pass


RESUME = ["iterations=4", "eval_every=2", "checkpoint_every=1", "refresh_every=1", "updater.optim.minibatches=2"]


def resume_args(name, out, demos_dir):
    extra = [f"demos={demos_dir}", "updater.batch_size=16"] if name in DEMO_UPDATERS else ["updater.episodes=4"]
    return ["train", f"updater={name}", *BASE, *RESUME, *extra, f"out_dir={out}"]


@pytest.mark.parametrize("name", ["ppo", "sft"])
def test_openvla_resumes_exactly_and_saves_only_its_adapters(name, tmp_path, openvla_demos, monkeypatch):
    """A tiny OpenVLA with LoRA (and, for PPO, a value head on its hidden state), crashed in iteration 3 and
    started again: the same metrics and weights as an uninterrupted run; its checkpoints hold the adapters
    and the value head only, and load_policy rebuilds the fine-tuned policy from them."""
    from vla_cl.policies.checkpoint import read_config_json
    from vla_cl.updaters import loop

    args = [*resume_args(name, tmp_path / "whole", openvla_demos), "policy=openvla", "lora_rank=4"]
    assert cli(args) == 0
    real_optimise, calls = loop.optimise, []

    def optimise_then_crash(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return real_optimise(*a, **k)

    crashed = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'crashed'}" for a in args]
    monkeypatch.setattr(loop, "optimise", optimise_then_crash)
    assert cli(crashed) == 1  # a crash: the CLI prints its traceback and exits 1
    monkeypatch.undo()
    assert cli(crashed) == 0
    assert metrics(tmp_path / "crashed") == metrics(tmp_path / "whole")
    final = tmp_path / "whole" / "artifacts" / "policy"
    saved = read_config_json(final)["config"]
    assert saved["lora"]["rank"] == 4 and saved["base"]["kind"] == "random"
    assert saved["value_head"] == (name == "ppo")
    names = list(load_policy(final).checkpoint_state())
    assert names and all(".lora_" in n or n.startswith("critic.") for n in names)
    assert same_weights(final_weights(tmp_path / "crashed"), final_weights(tmp_path / "whole"))
    reloaded, trained = load_policy(final), load_policy(tmp_path / "crashed" / "artifacts" / "policy")
    obs = ObsBatch(["reach the green target"], image=torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    tokens = reloaded.generate(obs, greedy=True).tokens
    with torch.no_grad():
        assert torch.equal(reloaded.action_logits(obs, tokens), trained.action_logits(obs, tokens))
        with reloaded.reference():  # pi0: the adapters off
            base = reloaded.action_logits(obs, tokens)
    assert not torch.equal(base, reloaded.action_logits(obs, tokens).detach())


@pytest.mark.parametrize("name", ["ppo", "sft"])
def test_a_crashed_run_resumes_to_the_same_metrics_and_weights(name, tmp_path, demos_dir, monkeypatch):
    import vla_cl.updaters.checkpoint as ckpt
    from vla_cl.updaters import loop

    whole = tmp_path / "whole"
    assert cli(resume_args(name, whole, demos_dir)) == 0

    # 1) crash in iteration 3, after its optimiser steps changed the weights in memory
    out = tmp_path / "crashed"
    real_optimise, calls = loop.optimise, []

    def optimise_then_crash(*args, **kwargs):
        result = real_optimise(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return result

    monkeypatch.setattr(loop, "optimise", optimise_then_crash)
    assert cli(resume_args(name, out, demos_dir)) == 1  # a crash: the CLI prints its traceback and exits 1
    monkeypatch.undo()
    assert [line["iteration"] for line in metrics(out)] == [0, 1, 2]

    # 2) crash while saving the checkpoint after iteration 3 (folder written, ``latest`` not yet moved),
    #    after that iteration's metrics line was written
    real_write, writes = ckpt.write_text_atomic, []

    def write_then_crash(path, text):
        writes.append(text)
        if text == "iter-000003":
            raise Crash
        real_write(path, text)

    monkeypatch.setattr(ckpt, "write_text_atomic", write_then_crash)
    assert cli(resume_args(name, out, demos_dir)) == 1  # a crash: the CLI prints its traceback and exits 1
    monkeypatch.undo()
    assert metrics(out)[-1]["iteration"] == 3
    assert (out / "artifacts" / "checkpoints" / "latest").read_text() == "iter-000002"

    # 3) the restart finishes and matches the uninterrupted run exactly
    assert cli(resume_args(name, out, demos_dir)) == 0
    assert metrics(out) == metrics(whole)
    assert same_weights(final_weights(out), final_weights(whole))
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 2
    # the two newest checkpoints are kept (keep_checkpoints=2), nothing a killed save left behind
    assert sorted(p.name for p in (out / "artifacts" / "checkpoints").iterdir()) == ["iter-000003", "iter-000004",
                                                                                     "latest"]


def test_how_often_a_run_checkpoints_does_not_change_its_results(tmp_path):
    """On a task whose env remembers earlier episodes (as ManiSkill's physics does), the scenes are rebuilt on
    the refresh_every schedule, not after each checkpoint: the same seed checkpointed every iteration, every
    second one or only at the end gives the same metrics and weights, while another refresh schedule changes
    them (the memory matters, so the first comparison could fail)."""
    from tests.updater_toy import MEMORY_TASK

    def run(name, *extra):
        out = tmp_path / name
        assert cli(["train", "updater=ppo", f"task={MEMORY_TASK}", *BASE[1:], "iterations=4", "eval_every=2",
                    "updater.episodes=4", "updater.optim.minibatches=2", f"out_dir={out}", *extra]) == 0
        return metrics(out), final_weights(out)

    every, weights = run("every", "refresh_every=2", "checkpoint_every=2")
    for name, checkpoints in (("end", "0"), ("fourth", "4")):
        other, other_weights = run(name, "refresh_every=2", f"checkpoint_every={checkpoints}")
        assert other == every and same_weights(other_weights, weights)
    never = run("never", "refresh_every=0", "checkpoint_every=2")[0]
    assert never != every  # the env's memory changes the episodes when it is not cleared


def test_a_checkpoint_off_the_refresh_schedule_is_refused(capsys, tmp_path):
    err = cli_error(capsys, tmp_path, "updater=ppo", "refresh_every=2", "checkpoint_every=3")
    assert "invalid value for checkpoint_every" in err and "multiple of refresh_every=2" in err


KILLABLE = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.updater_toy import register_toy
import vla_cl.updaters.loop as loop
register_toy()
real = loop.optimise
def slow(*args, **kwargs):  # room to land the kill inside an iteration
    time.sleep(0.15)
    return real(*args, **kwargs)
loop.optimise = slow
from vla_cl.cli import main
sys.exit(main({args!r}))
"""


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_same_metrics_and_weights(tmp_path, demos_dir):
    args = resume_args("ppo", tmp_path / "killed", demos_dir)
    args[args.index("iterations=4")] = "iterations=6"
    whole_args = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'whole'}" for a in args]
    assert cli(whole_args) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    script = KILLABLE.format(repo=str(REPO), args=args)
    latest = tmp_path / "killed" / "artifacts" / "checkpoints" / "latest"
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and latest.read_text() == "iter-000002":
            time.sleep(0.2)  # inside iteration 3 (or 4): mid-collection, mid-update or mid-save
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert latest.read_text() in ("iter-000002", "iter-000003", "iter-000004")
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, check=False)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    out = tmp_path / "killed"
    assert metrics(out) == metrics(tmp_path / "whole")
    assert same_weights(final_weights(out), final_weights(tmp_path / "whole"))


# ------------------------------------------------------------------------------------------ the simulator


@pytest.mark.sim
@pytest.mark.slow
def test_training_and_exact_resume_through_the_simulator(tmp_path, needs_sim, monkeypatch):
    """SFT on expert demonstrations of PickCube, then PPO from it, crashed and resumed: the resumed run's
    metrics and weights equal the uninterrupted run's (the envs' scenes are rebuilt every iteration)."""
    from vla_cl.envs.demos import collect_demos, save_demos
    from vla_cl.updaters import loop

    demos = save_demos(collect_demos("maniskill/PickCube-v1", 2, seed=0), tmp_path / "demos")
    common = ["task=maniskill/PickCube-v1", "policy_preset=tiny", "num_envs=2", "max_episode_steps=30",
              "eval_episodes=2", "probe_episodes=1", "progress=false", "tensorboard=false"]
    assert cli(["train", "updater=sft", f"demos={demos}", "updater.batch_size=32", "updater.optim.lr=1e-2", *common,
                "iterations=60", "eval_every=0", "probe_every=0", f"out_dir={tmp_path / 'sft'}"]) == 0
    sft = metrics(tmp_path / "sft")
    assert sft[-1]["kl/mean"] > 0 and sft[-1]["train/loss"] < 0.5 * sft[1]["train/loss"]

    rl = ["train", "updater=ppo", "updater.episodes=2", "updater.optim.minibatches=2", "iterations=3", "checkpoint_every=1", "refresh_every=1",
          *common,
          f"init={tmp_path / 'sft' / 'artifacts' / 'policy'}"]
    assert cli([*rl, f"out_dir={tmp_path / 'whole'}"]) == 0
    real_optimise, calls = loop.optimise, []

    def optimise_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return real_optimise(*args, **kwargs)

    monkeypatch.setattr(loop, "optimise", optimise_then_crash)
    assert cli([*rl, f"out_dir={tmp_path / 'resumed'}"]) == 1  # a crash: the CLI prints its traceback and exits 1
    monkeypatch.undo()
    assert cli([*rl, f"out_dir={tmp_path / 'resumed'}"]) == 0
    whole = metrics(tmp_path / "whole")
    assert whole[-1]["env_steps"] > 0 and whole[-1]["episodes"] == 6
    assert metrics(tmp_path / "resumed") == whole
    assert same_weights(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "whole"))


def test_benchmark_smoke(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_updaters", REPO / "benchmarks" / "updaters.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {name} " in table for name in UPDATERS) and "samples/s" in table


def test_soft_label_sft_and_training_on_demonstrations_without_an_env(demos_dir, tmp_path):
    """Pretraining's path: sft with Gaussian labels through the one loop with no env (no evaluation, no
    probe), on two demonstration sets merged into one, each episode keeping its instruction."""
    from vla_cl.envs.demos import load_demos, merge_demos
    from vla_cl.runs import RunDir
    from vla_cl.updaters.loop import LoopConfig, train

    one = load_demos(demos_dir)
    other = load_demos(demos_dir)
    other.meta = {**other.meta, "task_id": "toy/other", "instructions": ["do the other thing"] * other.num_episodes}
    merged = merge_demos([one, other])
    assert merged.num_episodes == 2 * one.num_episodes and len(merged) == 2 * len(one)
    assert merged.arrays["episode_index"][len(one)] == one.num_episodes
    assert merged.meta["instructions"][one.num_episodes] == "do the other thing"
    policy = toy_policy(value_head=False)
    before = demo_log_likelihood(policy, DemoStream(merged, policy, batch_size=16, seed=0))
    updater = make_updater("sft", optim={"lr": 3e-3, "minibatches": 1}, batch_size=16, label_sigma=1.5)
    run_dir = RunDir.open(tmp_path / "run", "train", {"x": 1})
    with pytest.raises(ValueError, match="collects episodes"):
        train(policy, make_updater("reinforce"), None, LoopConfig(iterations=1), run_dir, seed=0)
    summary = train(policy, updater, None, LoopConfig(iterations=8, progress=False, tensorboard=False), run_dir,
                    seed=0, demos=merged)
    assert "eval/success_rate" not in summary["final"] and "kl/mean" not in summary["final"]
    assert demo_log_likelihood(policy, DemoStream(merged, policy, batch_size=16, seed=0)) > before + 1.0
    bad = load_demos(demos_dir)
    bad.meta = {**bad.meta, "state_dim": bad.meta["state_dim"] + 1}
    with pytest.raises(ValueError, match="state_dim differ"):
        merge_demos([one, bad])


# ------------------------------------------------------------------------------------------ trust


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, demos_dir, capsys, monkeypatch):
    """Two checkpoints are kept; truncating the newest one's weights (or its training state, or `latest`)
    makes the resume say so and continue from the one before, to the uninterrupted result."""
    from vla_cl.updaters import loop

    whole = tmp_path / "whole"
    assert cli(resume_args("ppo", whole, demos_dir)) == 0
    real_optimise = loop.optimise
    for damage in ("weights", "state", "latest"):
        out = tmp_path / damage
        calls = []

        def crash_in_iteration_4(*a, calls=calls, **k):
            calls.append(1)
            if len(calls) == 4:
                raise Crash
            return real_optimise(*a, **k)

        monkeypatch.setattr(loop, "optimise", crash_in_iteration_4)
        assert cli(resume_args("ppo", out, demos_dir)) == 1
        monkeypatch.undo()
        root = out / "artifacts" / "checkpoints"
        assert sorted(p.name for p in root.iterdir()) == ["iter-000002", "iter-000003", "latest"]
        target = {"weights": root / "iter-000003" / "policy" / "model.safetensors",
                  "state": root / "iter-000003" / "training_state.safetensors", "latest": root / "latest"}[damage]
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        capsys.readouterr()
        resumed = [a if not a.startswith("out_dir=") else f"out_dir={out}" for a in resume_args("ppo", out, demos_dir)]
        assert cli(resumed) == 0
        if damage != "latest":  # a damaged pointer is simply ignored: the newest complete checkpoint is used
            assert "unreadable" in capsys.readouterr().out
        assert metrics(out) == metrics(whole)
        assert same_weights(final_weights(out), final_weights(whole))


def test_a_diverging_run_stops_naming_the_iteration_and_keeps_its_last_good_checkpoint(tmp_path, demos_dir,
                                                                                      monkeypatch, capsys):
    from vla_cl.updaters import rl

    out = tmp_path / "run"
    real = rl.PPO.objective

    def poisoned(self, policy, batch, logits):  # the loss turns NaN in iteration 3, as an lr too high would
        terms = real(self, policy, batch, logits)
        if poisoned.calls >= 2 * 2 * 4:  # two iterations of minibatches x epochs
            terms["loss"] = terms["loss"] * float("nan")
        poisoned.calls += 1
        return terms

    poisoned.calls = 0
    monkeypatch.setattr(rl.PPO, "objective", poisoned)
    assert cli(resume_args("ppo", out, demos_dir)) == 2
    err = capsys.readouterr().err
    assert "diverged in iteration 3" in err and "updater.optim.lr" in err and "Traceback" not in err
    assert (out / "artifacts" / "checkpoints" / "latest").read_text() == "iter-000002"
    assert [line["iteration"] for line in metrics(out)] == [0, 1, 2]
    from safetensors.torch import load_file

    weights = load_file(str(out / "artifacts" / "checkpoints" / "iter-000002" / "policy" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_execution_only_settings_never_block_a_resume(tmp_path, demos_dir):
    out = tmp_path / "run"
    first = [a for a in resume_args("sft", out, demos_dir) if a != "iterations=4"] + ["iterations=2"]
    assert cli(first) == 0
    again = [a for a in first if a not in ("progress=false",) and not a.startswith("iterations=")]
    assert cli([*again, "iterations=2", "progress=true", "tensorboard=false", "device=cpu"]) == 0
