"""Measuring every policy of the razor experiment: success on the suite and every forgetting predictor.

Policies: pi0, each run's final policy and its mid-training snapshots. Final policies (and pi0) get the
whole experiment suite (every axis, the suite's episodes); snapshots get the in-distribution axis with
``snapshot_episodes`` episodes, on the first of the same seeds, so their episodes pair with pi0's too.
Each evaluation lands in ``<folder>/<policy key>/`` and resumes from its finished jobs.

Predictors (``vla_cl.kl.compare``) compare pi with pi0 on probe states that pi0 visits: ``probe_episodes``
of pi0's own sampled episodes on the new task (the forward KL on the new task, the paper's predictor), and
``old_probe_episodes`` per retention task (the same divergences on old-task states); pi is teacher-forced
on the tokens pi0 took there. The weight predictors use pi0's diagonal Fisher on the old-task states.
``forward_kl_onpolicy`` is the same forward KL on new-task states that pi itself visits: ``onpolicy_probe_episodes``
of pi's own sampled episodes, from the same initial states for every policy, teacher-forced on pi's tokens. The
order-aware predictors measure in the policy's action values (``Policy.action_values``).
The probe sets are saved in ``probes/`` and every policy's predictors in ``predictors/<key>.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_cl.files import write_json_atomic
from vla_cl.kl import collect_activations, diagonal_fisher, parameter_snapshot, weight_deltas
from vla_cl.kl.compare import output_predictors, representation_predictors, weight_predictors
from vla_cl.kl.divergences import forward_kl
from vla_cl.kl.predictors import lora_weight_deltas
from vla_cl.policies.base import ObsBatch, Policy

MAX_PROBE_STATES = 512
PROBE_STREAM = 7  # derived-seed stream of the probe episodes
ONPOLICY_STREAM = 8  # and of each policy's own episodes for the on-policy forward KL


@dataclasses.dataclass
class Probe:
    """States pi0 visited and the tokens it took there."""

    obs: ObsBatch
    tokens: torch.Tensor


def concat(probes: list[Probe]) -> Probe:
    obs = ObsBatch([text for p in probes for text in p.obs.instruction],
                   *(None if getattr(probes[0].obs, name) is None else torch.cat([getattr(p.obs, name) for p in probes])
                     for name in ("state", "image")))
    return Probe(obs, torch.cat([p.tokens for p in probes]))


def observed_options(policy: Policy) -> dict[str, Any]:
    """The env options that give ``policy`` what it reads (observation mode and image side)."""
    obs_mode = "both" if policy.observation_keys == {"state", "image"} else "rgb" if policy.image_size else "state"
    return {"obs_mode": obs_mode, "image_size": policy.image_size or 64}


def collect_probe(policy: Policy, task: str, episodes: int, seed: int, stream: int = PROBE_STREAM,
                  **options: Any) -> Probe:
    """``policy``'s own sampled episodes of ``task`` (training grid), at most MAX_PROBE_STATES evenly spaced
    states; ``options`` are the envs' (``observed_options`` and the experiment's)."""
    from vla_cl.envs.vector import make_vector
    from vla_cl.updaters.data import collect_rollouts
    from vla_cl.updaters.loop import derived_seed, generator, probe_subset

    env = make_vector(task, 1, **options)
    try:
        rollouts = collect_rollouts(policy, env, episodes, derived_seed(seed, stream),
                                    generator(seed, stream), device=next(policy.parameters()).device)
    finally:
        env.close()
    return Probe(*probe_subset(rollouts, MAX_PROBE_STATES))


def probes(pi0: Policy, config: Any, folder: Path) -> tuple[Probe, Probe]:
    """The new-task and old-task probe sets (read from ``folder`` when collected before)."""
    from vla_cl.updaters.loop import load_probe_set, save_probe_set

    options = {**observed_options(pi0), **config.rollout_options()}
    out = []
    for name, tasks, episodes in (("new", [config.new_task], config.probe_episodes),
                                  ("old", config.retention_suite().task_ids, config.old_probe_episodes)):
        path = folder / f"{name}.safetensors"
        if path.exists():
            out.append(Probe(*load_probe_set(path)))
            continue
        probe = concat([collect_probe(pi0, t, episodes, config.seed + i, **options) for i, t in enumerate(tasks)])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_probe_set(path, probe.obs, probe.tokens)
        out.append(probe)
    return out[0], out[1]


class Predictors:
    """pi0's side of every comparison, computed once; :meth:`measure` gives a policy's predictors.

    Weight change is theta - theta0 over every parameter; for a policy fine-tuned through LoRA adapters
    (OpenVLA) it is each adapter's update B A of the weight it adapts (``lora_weight_deltas``), with pi0's
    Fisher on those weights, so a 7B model is never copied. Representations are the modules the policy
    names (``Policy.representation_modules``), averaged over token positions where there are several.
    ``onpolicy`` collects a policy's own new-task probe (``forward_kl_onpolicy``; None: not measured)."""

    def __init__(self, pi0: Policy, new: Probe, old: Probe, seed: int = 0, batch: int = 256,
                 onpolicy: Callable[[Policy], Probe] | None = None):
        self.new, self.old, self.layers = new, old, pi0.representation_modules()
        self.onpolicy = onpolicy
        self.support, self.batch, self.values = pi0.action_support, batch, pi0.action_values()
        self.base = {name: self._outputs(pi0, probe) for name, probe in (("new", new), ("old", old))}
        self.adapters = bool(getattr(pi0, "has_adapter", False))
        # pi0's side of the on-policy KL: the model itself, or for adapter policies pi with its adapter off
        self.pi0 = pi0 if onpolicy is not None and not self.adapters else None
        self.theta0 = None if self.adapters else parameter_snapshot(pi0)
        weights = list(lora_weight_deltas(pi0)) if self.adapters else list(self.theta0)
        step = max(1, min(64, batch))
        batches = [Probe(old.obs.select(slice(i, i + step)), old.tokens[i : i + step])
                   for i in range(0, len(old.tokens), step)]
        self.fisher = diagonal_fisher(pi0, batches, forward=lambda b: pi0.action_logits(b.obs, b.tokens),
                                      params=weights, support=self.support,
                                      generator=torch.Generator().manual_seed(seed))

    def _logits(self, policy: Policy, probe: Probe) -> torch.Tensor:
        return torch.cat([policy.action_logits(probe.obs.select(slice(i, i + self.batch)),
                                               probe.tokens[i : i + self.batch]).float().cpu()
                          for i in range(0, len(probe.tokens), self.batch)])

    def _outputs(self, policy: Policy, probe: Probe) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits: list[torch.Tensor] = []
        batches = [i for i in range(0, len(probe.tokens), self.batch)]
        forward = lambda i: logits.append(policy.action_logits(probe.obs.select(slice(i, i + self.batch)),
                                                               probe.tokens[i : i + self.batch]).float().cpu())
        activations = collect_activations(policy, self.layers, batches, forward=forward, pool_tokens=True)
        return torch.cat(logits), activations

    @torch.no_grad()
    def measure(self, policy: Policy) -> dict[str, float]:
        policy.eval()
        out: dict[str, float] = {}
        for name, probe in (("new", self.new), ("old", self.old)):
            logits, activations = self._outputs(policy, probe)
            base_logits, base_activations = self.base[name]
            out.update(output_predictors(base_logits, logits, name, self.support, values=self.values))
            out.update(representation_predictors(base_activations, activations, "" if name == "new" else "_old"))
        deltas = lora_weight_deltas(policy) if self.adapters else weight_deltas(policy, self.theta0)
        out.update(weight_predictors(deltas, self.fisher))
        if self.onpolicy is not None:
            own = self.onpolicy(policy)
            with torch.no_grad():
                logits = self._logits(policy, own)
                if self.pi0 is not None:
                    base_logits = self._logits(self.pi0, own)
                else:
                    with policy.reference() as base:
                        base_logits = self._logits(base, own)
                kl = forward_kl(base_logits, logits, self.support)
            out["forward_kl_onpolicy"] = float(kl.to(torch.float64).sum(-1).mean())
        return out


def measure_predictors(keys_and_folders: list[tuple[str, Path]], predictors: Predictors, folder: Path,
                       log: Any = print, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Every policy's predictors (cached as ``folder/<key>.json``)."""
    from vla_cl.policies.registry import load_policy_on

    out = {}
    for key, policy_folder in keys_and_folders:
        path = folder / f"{key}.json"
        if path.exists():
            out[key] = json.loads(path.read_text())
            continue
        values = predictors.measure(load_policy_on(policy_folder, device))
        if not all(np.isfinite(v) for v in values.values()):
            log(f"[razor]   {key}: a predictor is not finite: {values}")
        write_json_atomic(path, values)
        out[key] = values
    return out


# ------------------------------------------------------------------------------------------ the stages


def _summarise(label: str, result: Any, new_task: str) -> None:
    from vla_cl.evaluation.suite import AXES

    for task in result.tasks:
        cells = [result.cells.get((task, axis)) for axis in AXES]
        parts = [f"{c.axis} {c.success_rate:.0%}" for c in cells if c is not None and c.applicable]
        marker = " (new task)" if task == new_task else ""
        print(f"[razor]   {label} {task}{marker}: " + ", ".join(parts), flush=True)


def evaluate_pi0(config: Any, pi0: str, evaluations: Path, workers: int) -> dict:
    """pi0 on the experiment suite; returns its success per task and whether the design's targets held."""
    from vla_cl.evaluation import Evaluator

    with Evaluator(config.experiment_suite(), workers=workers, progress=config.progress,
                   device=config.device) as evaluate:
        result = evaluate(pi0, out_dir=evaluations / "pi0", label="pi0")
    _summarise("pi0", result, config.new_task)
    retention = {t: result.success(t) for t in config.retention_suite().task_ids}
    new = result.success(config.new_task)
    checks = {"retention_at_least_60": all(v >= 0.6 for v in retention.values()),
              "new_task_between_5_and_40": 0.05 <= new <= 0.40}
    for name, ok in checks.items():
        if not ok:
            print(f"[razor]   design target missed: {name} (retention {retention}, new task {new:.2f})", flush=True)
    return {"new_task_success": new, "retention": retention, "design_checks": checks}


def policies_of(trials: list[dict]) -> list[dict]:
    """Every final policy and snapshot of the sweep, with what the analysis needs to know about it."""
    from vla_cl.razor.config import Trial

    out = []
    for entry in trials:
        trial, folder = Trial(**entry["trial"]), Path(entry["folder"])
        snapshots = sorted((folder / "artifacts" / "snapshots").glob("iter-*"))
        for path in snapshots:
            out.append({"key": f"{trial.id}__{path.name}", "trial": trial.id, "method": trial.method,
                        "family": trial.family, "setting": trial.setting, "step": int(path.name.split("-")[1]),
                        "final": False, "folder": str(path)})
        out.append({"key": f"{trial.id}__final", "trial": trial.id, "method": trial.method, "family": trial.family,
                    "setting": trial.setting, "step": trial.iterations, "final": True,
                    "folder": str(folder / "artifacts" / "policy")})
    return out


def evaluate_all(config: Any, pi0: str, trials: list[dict], evaluations: Path, folder: Path, workers: int) -> dict:
    """Every policy of the sweep on the suite (finals: every axis; snapshots: in-distribution) and every
    predictor; returns the list of policies measured."""
    from vla_cl.evaluation import Evaluator
    from vla_cl.policies.registry import load_policy_on

    policies = policies_of(trials)
    suite = config.experiment_suite()
    short = suite.replace(axes=["in_distribution"], episodes=min(config.snapshot_episodes, suite.episodes))
    with Evaluator(suite, workers=workers, progress=config.progress, device=config.device) as full, \
            Evaluator(short, workers=workers, progress=config.progress, device=config.device) as quick:
        for entry in policies:
            evaluate = full if entry["final"] else quick
            result = evaluate(entry["folder"], out_dir=evaluations / entry["key"], label=entry["key"])
            if entry["final"]:
                _summarise(entry["key"], result, config.new_task)
    base = load_policy_on(pi0, config.device).eval()
    options = {**observed_options(base), **config.rollout_options()}
    own = None if not config.onpolicy_probe_episodes else (
        lambda policy: collect_probe(policy, config.new_task, config.onpolicy_probe_episodes, config.seed,
                                     ONPOLICY_STREAM, **options))
    reference = Predictors(base, *probes(base, config, folder / "probes"), seed=config.seed, onpolicy=own)
    del base
    measure_predictors([(e["key"], Path(e["folder"])) for e in policies], reference, folder / "predictors",
                       device=config.device)
    return {"policies": policies, "snapshot_episodes": short.episodes, "final_episodes": suite.episodes}


def evaluate_greedy(config: Any, pi0: str, trials: list[dict], folder: Path, workers: int) -> dict:
    """pi0 and every final policy on the retention tasks (in-distribution axis, the suite's episodes and seeds)
    acting greedily: sampled success rewards a policy that merely sharpens its action distribution, argmax
    actions do not. Lands in ``folder/<policy key>/``."""
    from vla_cl.evaluation import Evaluator

    suite = config.retention_suite().with_task_options(config.env_options())
    suite = suite.replace(name=f"{suite.name} (greedy)", axes=["in_distribution"], greedy=True)
    who = [("pi0", pi0), *((e["key"], e["folder"]) for e in policies_of(trials) if e["final"])]
    with Evaluator(suite, workers=workers, progress=config.progress, device=config.device) as evaluate:
        for key, policy in who:
            result = evaluate(policy, out_dir=folder / key, label=f"{key} (greedy)")
            print(f"[razor]   {key} greedy: " + ", ".join(f"{t.split('/')[-1]} {result.success(t):.0%}"
                                                          for t in suite.task_ids), flush=True)
    return {"policies": len(who), "episodes": suite.episodes}
