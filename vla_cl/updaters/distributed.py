"""The learner on several processes: data-parallel updates launched by ``accelerate launch`` (or ``torchrun``).

    torchrun --nproc_per_node 2 -m vla_cl.cli train learner.strategy=ddp out_dir=DIR ...     # CPUs: gloo
    accelerate launch --multi_gpu --num_processes 8 -m vla_cl.cli train learner.strategy=ddp ...
    accelerate launch --config_file configs/accelerate/fsdp_openvla.yaml -m vla_cl.cli train \\
        init=openvla/openvla-7b learner.strategy=fsdp learner.mixed_precision=bf16 \\
        learner.gradient_checkpointing=true rollout.inference=worker ...

accelerate's :class:`~accelerate.PartialState` reads the launcher's environment and sets up the process group
(gloo on CPUs, NCCL on GPUs) and each process's device; ``learner.processes=N`` has Ray start the N processes
instead (:func:`launch_on_ray`, one GPU each on cuda), for a cluster without a launcher.

Data. By default every process collects the iteration's episodes itself (same seeds, same sampling: the same
episodes on every process) and runs ``updater.prepare``; each minibatch is then split between the processes
(rows ``rank::world``). With ``shard_episodes`` each process collects its own share of the iteration's initial
states on its own sampling stream and keeps its whole batch (more episodes per second; the data differ from a
one-process run's, and advantages are standardised within each process's episodes). Either way each process
computes its rows' loss weighted by its share of the minibatch's rows over all processes, and the gradients are
summed over the processes (``accelerate.utils.reduce``) before clipping and the optimiser step: for a loss that
is a mean over rows, the gradient of the whole minibatch, i.e. the update one process makes on the concatenated
batch, up to float rounding (``tests/test_distributed.py``). The logged loss terms are the same weighted means
(exact for row means; ``explained_variance`` is the weighted mean of the processes' values); episode and step
counts are summed.

Measurements (ddp). The evaluation's episodes and the KL probe's states are split between the processes and
gathered: the probe gives the one-process numbers; greedy evaluation too, sampled evaluation draws each
process's actions from its own stream. Under fsdp every process measures everything (its sharded layers need
every process in the same forward passes).

The gradient sum comes after the backward pass instead of inside it (``torch.nn.parallel.DistributedDataParallel``)
because an updater's loss calls the policy's methods (``log_probs``, ``value``, ``entropy``, several per loss),
not one ``forward`` that a DDP wrapper could hook.

``fsdp``: each decoder layer of a policy's language model (OpenVLA's Llama) is sharded with FSDP
(``torch.distributed.fsdp.fully_shard``): its weights, LoRA adapters, gradients and optimiser state live 1/world
on each process and are gathered layer by layer for each forward; ``mixed_precision=bf16`` keeps the gathered
parameters in bf16 and reduces gradients in float32; ``gradient_checkpointing`` recomputes each layer's
activations in the backward pass (transformers' ``gradient_checkpointing_enable``). The parameters outside the
layers (vision towers, projector, embeddings, value head) stay whole on every process and their gradients
are summed as above. Checkpoints and the saved policy hold full tensors (gathered on every process, written by
the first).

Only the first process writes the run folder (metrics, checkpoints, the policy); the others read its
checkpoints when a run resumes, so a restarted learner continues from the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vla_cl.config import option, require, require_choice

STRATEGIES = ("auto", "single", "ddp", "fsdp")
PRECISIONS = ("no", "bf16")


@dataclasses.dataclass
class LearnerConfig:
    """How the learner runs: one process, or data-parallel over the processes a launcher started."""

    strategy: str = option("auto", "single, ddp or fsdp (auto: ddp when launched on several processes, else "
                           "single)", affects_results=False)
    shard_episodes: bool = option(False, "each process collects its own share of the iteration's episodes (other "
                                  "seeds and samples: throughput) instead of all of them (the one-process run's "
                                  "data exactly)")
    processes: int = option(1, "learner processes to start as Ray actors (one GPU each on cuda), instead of a "
                            "launcher; 1: this process alone (or what torchrun / accelerate launch started)",
                            affects_results=False)
    mixed_precision: str = option("no", "no or bf16 (fsdp: layer parameters gathered in bf16, gradients "
                                  "reduced in float32)")
    gradient_checkpointing: bool = option(False, "recompute the language model's activations in the backward "
                                          "pass (less memory, about a third more compute)", affects_results=False)

    def __post_init__(self) -> None:
        require_choice("learner.strategy", self.strategy, STRATEGIES)
        require_choice("learner.mixed_precision", self.mixed_precision, PRECISIONS)
        require(self.processes >= 1, "learner.processes", self.processes, "an integer >= 1")
        require(self.processes == 1 or self.strategy != "single", "learner.strategy", self.strategy,
                "auto, ddp or fsdp with learner.processes > 1")


def launched_world() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Learner:
    """One process's part of the learner (see the module docstring)."""

    def __init__(self, config: LearnerConfig | None = None, device: str = "cpu"):
        self.config = config or LearnerConfig()
        world = launched_world()
        strategy = self.config.strategy
        if strategy == "auto":
            strategy = "ddp" if world > 1 else "single"
        if strategy == "single" and world > 1:
            raise ValueError(f"invalid value for learner.strategy: single, but {world} processes were launched "
                             "(WORLD_SIZE); use ddp or fsdp, or launch one process")
        self.strategy = strategy
        self.rank, self.world = 0, 1
        self.sharded: list[torch.nn.Module] = []
        if strategy != "single" and world > 1:  # (ddp or fsdp over one process is that process alone)
            from accelerate import PartialState

            cpu = torch.device(device).type == "cpu"
            state = PartialState(cpu=cpu, backend="gloo" if cpu else None)
            if state.num_processes != world:
                raise ValueError(f"invalid value for learner.strategy: {strategy}, but the launcher set WORLD_SIZE="
                                 f"{world} and no process group of that size started (on CPUs launch with `torchrun "
                                 "--nproc_per_node N -m vla_cl.cli train ...`; `accelerate launch --cpu` starts MPI "
                                 "jobs only with --mpirun_hostfile)")
            self.rank, self.world = state.process_index, state.num_processes
            self.state = state

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # -- the model

    def prepare(self, policy: Any) -> Any:
        """Apply gradient checkpointing and, for fsdp, shard the language model's decoder layers."""
        lm = getattr(policy, "language_model", None)
        if self.config.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(lm, "activation_checkpointing_enable"):  # transformers' newer name
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            elif hasattr(lm, "gradient_checkpointing_enable"):
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            else:
                raise ValueError(f"invalid value for learner.gradient_checkpointing: True, but {policy.name} has no "
                                 "language model to checkpoint (it applies to openvla)")
        if self.strategy == "fsdp":
            layers = [m for m in lm.modules() if type(m).__name__.endswith("DecoderLayer")] if lm is not None else []
            if not layers:  # (under LoRA the layers sit inside the adapter wrapper: found by their class)
                raise ValueError(f"invalid value for learner.strategy: fsdp shards a language model's decoder "
                                 f"layers and {policy.name} has none; use ddp")
            if not self.distributed:
                return policy
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if self.config.mixed_precision == "bf16" else MixedPrecisionPolicy()
            for layer in layers:
                fully_shard(layer, mp_policy=precision)
                self.sharded.append(layer)
        if self.shards_episodes and self.strategy == "fsdp" and not getattr(self, "remote_inference", False):
            raise ValueError("invalid value for learner.shard_episodes: True under fsdp needs rollout.inference="
                             "worker (the sharded layers need every process in the same forward passes, and "
                             "episodes of different lengths are not)")
        elif self.config.mixed_precision == "bf16" and self.strategy != "fsdp":
            raise ValueError("invalid value for learner.mixed_precision: bf16 is applied by fsdp's gathered "
                             "parameters; with learner.strategy=ddp or single keep it at no")
        return policy

    def resharded(self) -> None:
        """Put every sharded layer back in its sharded state. A forward pass without gradients that ends early
        (generation with a KV cache stops after the last action token) can leave layers gathered, with their
        whole tensors registered as the parameters; an update must start from the shards."""
        for module in self.sharded:
            module.reshard()

    # -- the data

    @property
    def shards_episodes(self) -> bool:
        """Each process collects its own episodes (``shard_episodes``): its batch is its own, not a copy."""
        return self.distributed and self.config.shard_episodes

    def share(self, total: int, force: bool = False) -> range:
        """This process's part of ``total`` items (an iteration's initial states under ``shard_episodes``, or
        with ``force`` evaluation episodes and probe states), contiguous and as even as ``total`` allows."""
        if not (self.shards_episodes or (force and self.distributed)):
            return range(total)
        sizes = [len(block) for block in np.array_split(np.arange(total), self.world)]
        start = sum(sizes[:self.rank])
        return range(start, start + sizes[self.rank])

    def batch_sizes(self, rows: int) -> list[int]:
        """Every process's batch size (a collective under ``shard_episodes``; else everyone's is ``rows``)."""
        if not self.shards_episodes:
            return [rows] * self.world
        from accelerate.utils import gather

        return [int(n) for n in gather(torch.tensor([rows])).tolist()]

    @property
    def shards_measurements(self) -> bool:
        """Evaluation episodes and KL-probe states are split between the processes (ddp; fsdp's sharded layers
        need every process in the same forward passes, so there each measures everything)."""
        return self.distributed and not self.sharded

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order (a collective)."""
        if not self.distributed:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def total_rows(self, rows: int) -> int:
        """Rows of the iteration's data over all processes (each has its own, or every one a copy)."""
        return sum(self.batch_sizes(rows)) if self.shards_episodes else rows

    def shard(self, rows: np.ndarray, all_rows: list[int] | None = None) -> tuple[np.ndarray, float]:
        """This process's rows of a minibatch and the weight of its loss: its share of the minibatch's rows over
        all processes (times world under fsdp, whose gradient reduction averages). With a copy of the batch on
        every process the rows are split between them; with ``shard_episodes`` each keeps its own rows and
        ``all_rows`` gives every process's count in this minibatch."""
        if not self.distributed:
            return rows, 1.0
        if self.shards_episodes:
            mine, total = rows, sum(all_rows)
        else:
            mine, total = rows[self.rank::self.world], len(rows)
        share = len(mine) / max(total, 1)
        return mine, share * (self.world if self.strategy == "fsdp" else 1.0)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Values summed over the processes (a collective; the same names on every process)."""
        if not self.distributed:
            return values
        from accelerate.utils import reduce

        names = sorted(values)
        summed = reduce(torch.tensor([float(values[n]) for n in names], dtype=torch.float64), reduction="sum")
        return dict(zip(names, summed.tolist()))

    def reduce_terms(self, terms: dict[str, float], weight: float) -> dict[str, float]:
        """Loss terms over all rows: the processes' values weighted by their shares of the minibatch."""
        if not self.distributed:
            return terms
        from accelerate.utils import reduce

        names = sorted(terms)
        share = weight / self.world if self.strategy == "fsdp" else weight
        values = torch.tensor([terms[n] * share for n in names], dtype=torch.float64)
        summed = reduce(values, reduction="sum")
        return dict(zip(names, summed.tolist()))

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the replicated parameters' gradients over the processes (fsdp reduces its own)."""
        if not self.distributed:
            return
        from accelerate.utils import reduce

        replicated = [p for p in params if not _is_dtensor(p)]
        for p in replicated:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if replicated:  # one reduction for all of them; fsdp weighs losses for its averaging reduction
            flat = torch.cat([p.grad.reshape(-1) for p in replicated])
            flat = reduce(flat, reduction="mean" if self.strategy == "fsdp" else "sum")
            offset = 0
            for p in replicated:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients to a global norm of ``max_norm`` (inf: measure only); returns the norm before."""
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        import torch.distributed as dist

        with_grad = [p for p in params if p.grad is not None]
        local = torch.zeros((), dtype=torch.float64)
        replicated = torch.zeros((), dtype=torch.float64)
        for p in with_grad:
            if _is_dtensor(p.grad):
                local += p.grad.to_local().double().pow(2).sum()
            else:
                replicated += p.grad.double().pow(2).sum()
        dist.all_reduce(local)  # the shards' squares, summed over the processes
        norm = (local + replicated).sqrt().float()
        if bool(torch.isfinite(norm)) and max_norm < float("inf"):
            scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            for p in with_grad:
                p.grad.mul_(scale)
        return norm

    # -- the run

    @contextlib.contextmanager
    def gathered(self, write: bool = True) -> Iterator[bool]:
        """Within: the sharded layers' parameters whole on every process (a collective: every process enters);
        yields whether this process writes (the first)."""
        for module in self.sharded:
            module.unshard()
        try:
            yield write and self.main
        finally:
            for module in self.sharded:
                module.reshard()

    def barrier(self) -> None:
        if self.distributed:
            self.state.wait_for_everyone()


# ------------------------------------------------------------------------------------------ launching from Ray


class LearnerProcess:
    """A Ray actor: one process of a learner that Ray started (:func:`launch_on_ray`)."""

    def address(self) -> tuple[str, int]:
        import socket

        import ray

        with socket.socket() as probe:
            probe.bind(("", 0))
            return ray.util.get_node_ip_address(), probe.getsockname()[1]

    def run(self, fn: Any, args: tuple, rank: int, world: int, master: tuple[str, int]) -> Any:
        os.environ.update({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(world),
                           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1])})
        return fn(*args)


def launch_on_ray(processes: int, fn: Any, args: tuple, *, gpus: float = 0.0, cpus: float = 1.0) -> list[Any]:
    """Run ``fn(*args)`` in ``processes`` Ray actors set up as one process group (rank 0's node is the master),
    as ``torchrun`` would; returns each process's result, rank order. One failing stops them all."""
    import ray

    from vla_cl import workers

    if not ray.is_initialized():
        workers.start_ray(workers.current(), max(processes, int(os.cpu_count() or 1)))
    actor = ray.remote(LearnerProcess).options(num_cpus=cpus, num_gpus=gpus)
    ranks = [actor.remote() for _ in range(processes)]
    try:
        master = ray.get(ranks[0].address.remote())
        return ray.get([r.run.remote(fn, args, i, processes, master) for i, r in enumerate(ranks)])
    finally:
        for r in ranks:
            ray.kill(r, no_restart=True)


def whole(value: torch.Tensor) -> torch.Tensor:
    """A tensor, gathered whole if it is sharded (a collective for sharded ones: every process calls it)."""
    return value.full_tensor() if _is_dtensor(value) else value


def _is_dtensor(value: Any) -> bool:
    return type(value).__name__ == "DTensor"
