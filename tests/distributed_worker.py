"""One process of a distributed-learner test (run by torchrun from tests/test_distributed.py, or alone).

    torchrun --nproc_per_node 2 tests/distributed_worker.py ddp OUT state_token gradients
    torchrun --nproc_per_node 2 tests/distributed_worker.py fsdp OUT openvla step [bf16 1]
    python tests/distributed_worker.py single OUT state_token gradients

Every process builds the same policy and the same batch (the toy task's episodes, same seeds), then
``gradients``: one backward pass through vla_cl.updaters.distributed (its rows of the batch, weighted, the
gradients reduced) and writes the whole gradients; ``own-episodes``: the same with each process's own
episodes (seeds 11, 111, ...; one process: all of them, concatenated); ``step``: one ``optimise`` call (the updater's epochs
over the whole batch) and writes the weights. The first process writes OUT/<policy>-<what>-<mode>[...].safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.updater_toy import TASK, register_toy


def build(policy_name: str, seeds: tuple[int, ...] = (11,)):
    from vla_cl.envs import make
    from vla_cl.envs.vector import make_vector
    from vla_cl.policies import get_policy_class
    from vla_cl.updaters.data import collect_rollouts
    from vla_cl.updaters.registry import make_updater

    register_toy()
    env = make(TASK)
    if policy_name == "openvla":
        from vla_cl.policies.openvla import OpenVLAPolicy

        policy = OpenVLAPolicy.for_task(state_dim=6, action_stats=env.action_stats, preset="tiny", seed=0,
                                        instructions=[env.task_spec.instruction], value_head=False)
        torch.manual_seed(1)
        policy.prepare_finetuning(lora_rank=4)
        obs_mode, side, updater = "rgb", policy.image_size, make_updater("reinforce", episodes=3)
    else:
        policy = get_policy_class(policy_name).for_task(state_dim=6, action_stats=env.action_stats, preset="tiny",
                                                        seed=0, instructions=[env.task_spec.instruction],
                                                        value_head=True)
        obs_mode, side, updater = "state", 32, make_updater("ppo", episodes=3, optim={"minibatches": 1})
    envs = make_vector(TASK, 2, obs_mode=obs_mode, image_size=side, max_episode_steps=12)
    policy.mark_reference()
    batches = [updater.prepare(policy, collect_rollouts(policy, envs, 3, seed, torch.Generator().manual_seed(seed),
                                                        reward="env")) for seed in seeds]
    envs.close()
    batch = batches[0] if len(batches) == 1 else concatenate(batches)
    return policy, updater, batch


def concatenate(batches):
    from vla_cl.policies.base import ObsBatch
    from vla_cl.updaters.data import Batch

    obs = ObsBatch([t for b in batches for t in b.obs.instruction], torch.cat([b.obs.state for b in batches]), None)
    fields = {name: torch.cat([getattr(b, name) for b in batches]) for name in Batch.PER_ROW
              if getattr(batches[0], name) is not None}
    return Batch(obs, torch.cat([b.tokens for b in batches]), **fields)


def main(mode: str, out: str, policy_name: str, what: str, precision: str = "no", checkpointing: str = "0") -> None:
    from safetensors.torch import save_file

    from vla_cl.updaters.distributed import Learner, LearnerConfig, whole
    from vla_cl.updaters.loop import optimise
    from vla_cl.updaters.optim import make_optimizer

    sharded = what == "own-episodes"  # each process its own episodes; one process: both, concatenated
    learner = Learner(LearnerConfig(strategy=mode, mixed_precision=precision, shard_episodes=sharded,
                                    gradient_checkpointing=checkpointing == "1"))
    seeds = ((11 + 100 * learner.rank,) if learner.distributed else (11, 111)) if sharded else (11,)
    policy, updater, batch = build(policy_name, seeds)
    learner.prepare(policy)
    if checkpointing == "1":  # transformers' flag (either name) says the layers recompute
        lm = policy.language_model
        assert getattr(lm, "is_activation_checkpointing", None) or lm.is_gradient_checkpointing
    params = policy.trainable_parameters()
    names = {id(p): n for n, p in policy.named_parameters()}
    if what in ("gradients", "own-episodes"):
        rows = np.arange(len(batch))
        mine, weight = learner.shard(rows, learner.batch_sizes(len(batch)))
        terms = updater.loss(policy, batch.select(mine))
        (terms["loss"] * weight).backward()
        learner.reduce_gradients(params)
        result = {names[id(p)]: whole(p.grad).detach().float().contiguous() for p in params if p.grad is not None}
    else:
        optimizer = make_optimizer(params, updater.config.optim)
        losses, _ = optimise(policy, updater, batch, optimizer, 0, 100, np.random.default_rng(0), torch.device("cpu"),
                             learner)
        result = {names[id(p)]: whole(p.detach()).float().contiguous() for p in params}
        result["loss"] = torch.tensor([losses["train/loss"]])
    if learner.main:
        tag = "" if (precision, checkpointing) == ("no", "0") else f"-{precision}-gc{checkpointing}"
        save_file(result, str(Path(out) / f"{policy_name}-{what}-{mode}{tag}.safetensors"))
    learner.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
