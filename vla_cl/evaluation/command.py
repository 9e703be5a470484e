"""``vla-cl eval``: a policy on a suite, written as ``result.json`` (every episode) and ``result.md``.

    vla-cl eval policy=runs/pi0/artifacts/policy suite=razor workers=2 out_dir=runs/eval/pi0
    vla-cl eval policy=expert suite=smoke
    vla-cl eval policy=runs/ppo/artifacts/policy suite=razor base=runs/eval/pi0   # + forgetting vs pi0

``policy`` is a checkpoint folder, ``expert`` or ``random``; ``suite`` a name under ``configs/suite/`` or a
YAML file; ``episodes``, ``axes`` and ``seeds`` override the suite's. With ``base`` (an earlier result of
the same suite), ``retention.md`` and ``retention.json`` give the forgetting per task with paired
intervals. Started again with the same out_dir, an interrupted evaluation reuses its finished jobs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vla_cl.config import RunConfig, option, require
from vla_cl.runs import RunDir


@dataclasses.dataclass
class EvalConfig(RunConfig):
    policy: str = option("expert", "a policy checkpoint folder, expert or random")
    suite: str = option("smoke", "a suite name (configs/suite/NAME.yaml) or a suite YAML file")
    episodes: int | None = option(None, "episodes per task, axis and seed (None: the suite's)")
    axes: list | None = option(None, "generalisation axes (None: the suite's)")
    seeds: list | None = option(None, "evaluation seeds (None: the suite's)")
    base: str | None = option(None, "an earlier result of the same suite (its folder) to measure forgetting against")
    workers: int = option(1, "worker processes running the suite's jobs", affects_results=False)
    progress: bool = option(True, "show a progress bar", affects_results=False)

    def __post_init__(self) -> None:
        require(self.workers >= 1, "workers", self.workers, "an integer >= 1")
        if self.policy not in ("expert", "random"):
            from vla_cl.policies.registry import checkpoint_policy_name

            try:
                checkpoint_policy_name(self.policy)
            except (ValueError, OSError) as error:
                raise ValueError(f"invalid value for policy: {self.policy!r} is neither expert, random nor a "
                                 f"policy checkpoint folder ({error})") from None
        self.suite_config()  # validates the suite and the overrides
        if self.base is not None:
            from vla_cl.evaluation.results import read_result

            read_result(self.base)

    def suite_config(self):
        from vla_cl.evaluation.suite import load_suite

        return load_suite(self.suite, episodes=self.episodes, axes=self.axes, seeds=self.seeds)


def run(config: EvalConfig, run_dir: RunDir) -> int:
    from vla_cl.evaluation.results import read_result
    from vla_cl.evaluation.retention import markdown, retention
    from vla_cl.evaluation.runner import check_policy, evaluate, resolve_policy
    from vla_cl.files import write_json_atomic, write_text_atomic

    suite = config.suite_config()
    policy, info = resolve_policy(config.policy)
    check_policy(policy, info, suite)  # before the run folder is written
    run_dir.begin()
    result = evaluate(config.policy, suite, out_dir=run_dir.path, workers=config.workers, progress=config.progress)
    for cell in result.cells.values():
        run_dir.log(event="cell", **cell.summary())
    print(result.markdown())
    if config.base is not None:
        kept = retention(read_result(config.base), result)
        write_json_atomic(run_dir.path / "retention.json", kept.to_dict())
        write_text_atomic(run_dir.path / "retention.md", markdown(kept, "base", Path(config.policy).name))
        print(markdown(kept, "base", Path(config.policy).name))
    print(f"[eval] {result.seconds:.1f} s; results in {run_dir.path / 'result.md'}")
    return 0
