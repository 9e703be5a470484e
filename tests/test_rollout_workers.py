"""Rollouts through Ray actors (vla_cl.envs.remote, vla_cl.updaters.inference): env workers and an inference
worker give the episodes the single-process collector gives for the same seeds, a killed env worker is replaced
and its collection gathered again with the same result, and weight syncs send only what the learner trains."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.updater_toy import TASK, register_toy
from vla_cl.envs.remote import RayVectorEnv, split
from vla_cl.envs.vector import make_vector
from vla_cl.runs import RunDir
from vla_cl.updaters import data
from vla_cl.updaters.data import collect_rollouts
from vla_cl.updaters.registry import make_updater

ray = pytest.importorskip("ray")

OPTIONS = {"obs_mode": "state", "image_size": 32}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray instance of 2 CPUs for the module (the one a command would start), and the toy task."""
    register_toy()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        from vla_cl import workers

        workers.start_ray(workers.current(), 2)
    yield
    if started:
        ray.shutdown()


def toy_policy(seed=0, value_head=True, name="state_token"):
    from vla_cl.envs import make
    from vla_cl.policies import get_policy_class

    env = make(TASK)
    return get_policy_class(name).for_task(state_dim=6, action_stats=env.action_stats, preset="tiny", seed=seed,
                                           instructions=[env.task_spec.instruction], value_head=value_head)


def ray_env(num_envs=4, workers=2, **kwargs):
    return RayVectorEnv(TASK, num_envs, workers, options=OPTIONS, cpus=0.5, setup=register_toy, **kwargs)


def collect(policy, env, actor=None, seed=123, episodes=6, repeats=1):
    return collect_rollouts(policy, env, episodes, seed, torch.Generator().manual_seed(7), repeats=repeats,
                            actor=actor)


def same_rollouts(a, b) -> None:
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.obs.state, b.obs.state)
    assert a.obs.instruction == b.obs.instruction
    for name in ("reward", "terminated", "truncated", "episode", "success", "returns", "seeds"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.final_obs.state, b.final_obs.state)


def test_slots_are_split_in_contiguous_blocks():
    assert split(5, 2) == [range(3), range(3, 5)]
    assert split(4, 4) == [range(i, i + 1) for i in range(4)]


def test_two_env_workers_give_the_single_process_batch():
    policy = toy_policy()
    local = make_vector(TASK, 4, **OPTIONS)
    remote = ray_env()
    try:
        pids = remote.pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids  # two actors, neither this process
        expected = collect(policy, local, repeats=2)
        got = collect(policy, remote, repeats=2)
    finally:
        local.close()
        remote.close()
    assert expected.num_episodes == 12 and len(expected) > 12
    same_rollouts(expected, got)


def test_an_inference_worker_acts_like_the_learner_and_syncs_the_trained_weights():
    from vla_cl.updaters.inference import InferenceWorker

    policy = toy_policy()
    local = make_vector(TASK, 4, **OPTIONS)
    worker = InferenceWorker.start(policy, cpus=0.5)
    try:
        with torch.no_grad():  # the learner moves on; the worker has pi0 until it is synced
            for p in policy.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        stale = collect(policy, local, actor=worker.actor())
        synced = worker.sync(policy)
        fresh = collect(policy, local, actor=worker.actor())
        expected = collect(policy, local)
    finally:
        worker.close()
        local.close()
    same_rollouts(expected, fresh)
    assert not torch.equal(stale.tokens[:len(fresh)], fresh.tokens[:len(stale)])  # pi0's actions differ
    trained = sum(p.numel() * p.element_size() for p in policy.trainable_parameters())
    assert synced["sync/bytes"] == trained and synced["sync/seconds"] > 0


def test_a_sync_sends_only_the_adapters_when_the_base_is_frozen():
    from vla_cl.policies.openvla import OpenVLAPolicy
    from vla_cl.updaters.inference import InferenceWorker

    policy = OpenVLAPolicy.tiny()
    policy.prepare_finetuning(lora_rank=4)
    everything = sum(p.numel() * p.element_size() for p in policy.parameters())
    adapters = sum(p.numel() * p.element_size() for n, p in policy.named_parameters() if "lora_" in n)
    worker = InferenceWorker.start(policy, cpus=0.5)
    try:
        sent = worker.sync(policy)["sync/bytes"]
    finally:
        worker.close()
    assert adapters > 0 and sent == sum(p.numel() * p.element_size() for p in policy.trainable_parameters())
    assert sent < everything / 5


def test_a_killed_env_worker_is_replaced_and_its_collection_gathered_again(monkeypatch, capsys):
    policy = toy_policy()
    local = make_vector(TASK, 4, **OPTIONS)
    expected = collect(policy, local)
    local.close()
    remote = ray_env()
    first_pids = remote.pids()
    calls = {"n": 0}
    act = data.PolicyActor.__call__

    def killing(self, observations):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-collection: episodes are under way on every slot
            os.kill(first_pids[1], signal.SIGKILL)
        return act(self, observations)

    monkeypatch.setattr(data.PolicyActor, "__call__", killing)
    try:
        got = collect(policy, remote)
        new_pids = remote.pids()
    finally:
        remote.close()
    same_rollouts(expected, got)
    assert remote.replaced == 1
    assert new_pids[0] == first_pids[0] and new_pids[1] != first_pids[1]  # worker 1 alone was replaced
    assert "died" in capsys.readouterr().out


def test_a_collection_losing_more_workers_than_allowed_stops_naming_them():
    policy = toy_policy()
    remote = ray_env(max_replacements=0)
    try:
        os.kill(remote.pids()[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"env worker\(s\) \[0\].*ray.retries=0"):
            collect(policy, remote)
    finally:
        remote.close()


def test_too_many_env_workers_for_the_cluster_are_refused_naming_the_field(monkeypatch):
    from vla_cl.envs import remote

    monkeypatch.setattr(remote, "PLACEMENT_TIMEOUT", 2)
    with pytest.raises(ValueError, match="rollout.env_workers: Ray cannot place 3 env workers of 4 CPU"):
        RayVectorEnv(TASK, 4, 3, options=OPTIONS, cpus=4, setup=register_toy)


@pytest.mark.parametrize("updater", ["ppo", "grpo", "reinforce"])
def test_every_on_policy_updater_trains_the_same_on_ray_workers(updater, tmp_path):
    """The whole loop: env workers and an inference worker give the in-process run's metrics and weights."""
    from vla_cl.updaters.inference import InferenceWorker
    from vla_cl.updaters.loop import WALL_CLOCK, LoopConfig, train

    def run(out, remote):
        policy = toy_policy(value_head=updater == "ppo")
        up = make_updater(updater, episodes=4)
        env = ray_env() if remote else make_vector(TASK, 4, **OPTIONS)
        worker = InferenceWorker.start(policy, cpus=0.5) if remote else None
        run_dir = RunDir.open(out, "train", {"remote": remote})
        try:
            train(policy, up, env, LoopConfig(iterations=2, eval_episodes=2, probe_episodes=1, progress=False,
                                              tensorboard=False), run_dir, seed=3, inference=worker)
        finally:
            env.close()
            if worker is not None:
                worker.close()
        lines = run_dir.read_metrics()
        return [{k: v for k, v in line.items() if k not in WALL_CLOCK and not k.startswith(("sync/", "rollout/env"))}
                for line in lines], lines, {n: p.detach().clone() for n, p in policy.named_parameters()}

    local, _, local_weights = run(tmp_path / "local", remote=False)
    remote, lines, remote_weights = run(tmp_path / "ray", remote=True)
    assert local == remote
    assert all(torch.equal(local_weights[n], remote_weights[n]) for n in local_weights)
    assert all(line["sync/bytes"] > 0 and line["rollout/env_workers_replaced"] == 0 for line in lines[1:])
