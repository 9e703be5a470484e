"""``vla-cl predict-forgetting``: how much a fine-tuned policy forgot, predicted from the new task alone.

    vla-cl predict-forgetting policy=runs/train/x/artifacts/policy base=PI0 task=maniskill/PickCubeLowGoal-v2 \\
        law=runs/razor/<stamp>/summary.json predictor=forward_kl_new

The predictor is measured on new-task states only, pi0's own episodes of ``task`` drawn as the sweep drew its
probe (the law file's episodes, seed and env options, so a sweep policy measures here as it did there), and no
retention task is touched. Forgetting is then predicted from the law the sweep fitted (its points' quadratic)
with a 95 % prediction interval (``vla_cl.evaluation.prediction``); the report's leave-one-run-out table says how
often such an interval covered a held-out run. Writes ``prediction.json`` in the run folder.

A law file from another experiment (not a razor ``summary.json``, another new task, no values of the predictor),
a predictor that needs retention-task data, or a policy whose action space differs from the base's is refused with
the field named, before any episode.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.config import RunConfig, option, require
from vla_cl.kl.compare import ONPOLICY_PREDICTORS, PREDICTORS

# the predictors measured on new-task states alone (outputs of pi and pi0 there)
NEW_TASK_PREDICTORS = tuple(n for n in PREDICTORS if n.endswith("_new") and n not in ONPOLICY_PREDICTORS)
LAW_KEYS = ("runs", "probe", "new_task", "r2")


def read_law(path: str) -> dict[str, Any]:
    """A razor ``summary.json`` with what a prediction needs; ValueError naming ``law`` otherwise."""
    file = Path(path)
    if file.is_dir():
        file = file / "summary.json"
    try:
        law = json.loads(file.read_text())
    except OSError as error:
        raise ValueError(f"invalid value for law: cannot read {file} ({error.strerror or error}); pass the "
                         "summary.json of a `vla-cl razor` run folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"invalid value for law: {file} is not JSON ({error}); pass the summary.json of a "
                         "`vla-cl razor` run folder") from None
    lacking = [k for k in LAW_KEYS if not isinstance(law, dict) or k not in law]
    if lacking:
        raise ValueError(f"invalid value for law: {file} is not a razor summary with a probe record (it lacks "
                         f"{', '.join(lacking)}): another experiment's file, or a razor run from before "
                         "predictions; pass the summary.json a current `vla-cl razor` run wrote")
    law["file"] = str(file)
    return law


@dataclasses.dataclass
class PredictConfig(RunConfig):
    policy: str | None = option(None, "the fine-tuned policy (a checkpoint folder)")
    base: str | None = option(None, "pi0, the policy it was fine-tuned from (the law's pi0 for the law to apply)")
    task: str | None = option(None, "the new task it was fine-tuned on (the law's new task)")
    law: str | None = option(None, "a razor run's summary.json (or its run folder): the fitted sweep")
    predictor: str = option("forward_kl_new", "the predictor to measure and predict from: "
                            + ", ".join(NEW_TASK_PREDICTORS))
    device: str = option("cpu", "torch device for the two policies", affects_results=False)

    def __post_init__(self) -> None:
        from vla_cl.policies.registry import checkpoint_policy_name

        for name in ("policy", "base", "task", "law"):
            require(getattr(self, name) is not None, name, None, "a value (see vla-cl predict-forgetting --help)")
        for name in ("policy", "base"):
            try:
                checkpoint_policy_name(getattr(self, name))
            except (ValueError, OSError) as error:
                raise ValueError(f"invalid value for {name}: {getattr(self, name)!r} is not a policy checkpoint "
                                 f"folder ({error})") from None
        require(self.predictor in NEW_TASK_PREDICTORS, "predictor", self.predictor,
                f"one measured on new-task states alone: {', '.join(NEW_TASK_PREDICTORS)}")
        law = read_law(self.law)
        require(self.task == law["probe"]["task"], "task", self.task,
                f"{law['probe']['task']}, the new task of the law in {law['file']} (a law fitted on another task "
                "does not apply)")
        values = [run.get(self.predictor) for run in law["runs"]]
        if not any(v is not None for v in values):
            have = sorted(n for n in NEW_TASK_PREDICTORS if any(run.get(n) is not None for run in law["runs"]))
            raise ValueError(f"invalid value for predictor: {self.predictor}, but the law in {law['file']} has no "
                             f"values of it (its predictors: {', '.join(have) or 'none'}); choose one of those")


def check_action_spaces(policy: Any, base: Any) -> None:
    """The same action tokens and the same physical values behind them, or ValueError naming ``policy``."""
    mine, theirs = policy.action_values(), base.action_values()
    if policy.action_support != base.action_support or mine.shape != theirs.shape or not np.allclose(mine, theirs):
        raise ValueError(f"invalid value for policy: its action space ({mine.shape[0]} dimensions x {mine.shape[1]} "
                         f"bins, values {mine.min():.3g}..{mine.max():.3g}) differs from the base's "
                         f"({theirs.shape[0]} x {theirs.shape[1]}, {theirs.min():.3g}..{theirs.max():.3g}); the "
                         "divergence between them would compare different actions. Pass the policy fine-tuned "
                         "from this base")


def measure(policy: Any, base: Any, task: str, probe: dict[str, Any], predictor: str) -> dict[str, Any]:
    """``predictor`` of ``policy`` against ``base`` on the base's own episodes of ``task``."""
    import torch

    from vla_cl.kl.compare import output_predictors
    from vla_cl.razor.measure import collect_probe, observed_options

    options = {**observed_options(base), **probe.get("options", {})}
    states = collect_probe(base, task, int(probe["episodes"]), int(probe["seed"]), **options)
    with torch.no_grad():
        policy.eval(), base.eval()
        logits = policy.action_logits(states.obs, states.tokens).float().cpu()
        base_logits = base.action_logits(states.obs, states.tokens).float().cpu()
    values = output_predictors(base_logits, logits, "new", base.action_support, values=base.action_values())
    return {"value": values[predictor], "states": len(states.tokens), "episodes": int(probe["episodes"])}


def run(config: PredictConfig, run_dir: Any) -> int:
    from vla_cl.evaluation.prediction import fit_law, usable
    from vla_cl.policies.registry import load_policy_on

    law = read_law(config.law)
    policy, base = load_policy_on(config.policy, config.device), load_policy_on(config.base, config.device)
    check_action_spaces(policy, base)
    points = usable(law["runs"], config.predictor)
    fitted = fit_law([p[config.predictor] for p in points], [p["forgetting"] for p in points], config.predictor)
    measured = measure(policy, base, config.task, law["probe"], config.predictor)
    prediction = fitted.predict(measured["value"])
    loo = (law.get("prediction") or {}).get(config.predictor)
    out = {"policy": config.policy, "base": config.base, "task": config.task, "law": law["file"],
           "predictor": config.predictor, "measured": measured, "prediction": prediction, "fit": fitted.to_dict(),
           "leave_one_run_out": loo}
    run_dir.write_json("prediction.json", out)
    trust = ("" if not loo else f"; on the sweep, leave-one-run-out error {loo['mae']:.3f} and coverage "
             f"{loo['coverage']:.0%} of the 95 % interval")
    print(f"[predict] {config.predictor} = {measured['value']:.4f} on {measured['states']} new-task states; "
          f"predicted forgetting {prediction['forgetting']:+.3f} (95 % prediction interval {prediction['low']:+.3f} "
          f"to {prediction['high']:+.3f}{', extrapolated beyond the sweep' if prediction['extrapolated'] else ''})"
          f"{trust}", flush=True)
    return 0
