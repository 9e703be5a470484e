"""The table of ``vla-cl`` subcommands.

Each entry names where its config dataclass and its ``run(config, run_dir)`` function live, so that
``vla-cl --help`` lists every verb without importing torch, ManiSkill or transformers.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking (config, RunDir) and returning an exit status or None

    def load_config_class(self) -> type:
        return _load(self.config)

    def load_run(self) -> Callable[..., Any]:
        return _load(self.run)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "info",
            "Report the machine, package versions and the Vulkan driver SAPIEN will use.",
            "vla_cl.cli.info:InfoConfig",
            "vla_cl.cli.info:run",
        ),
        Command(
            "sim-check",
            "Create a ManiSkill3 task on the CPU, step it and render frames (checks the simulation stack).",
            "vla_cl.envs.check:SimCheckConfig",
            "vla_cl.envs.check:run",
        ),
        Command(
            "demos",
            "Record scripted-expert demonstrations of a task (state/images, actions, success) for SFT.",
            "vla_cl.envs.demos:DemosConfig",
            "vla_cl.envs.demos:run",
        ),
        Command(
            "render",
            "Write rollout videos (mp4 with captions) and contact sheets of a policy on a task.",
            "vla_cl.envs.video:RenderConfig",
            "vla_cl.envs.video:run",
        ),
        Command(
            "parity",
            "ParityMNIST mechanism track: RL vs SFT forgetting, the forward-KL law and the predictor table.",
            "vla_cl.parity.command:ParityConfig",
            "vla_cl.parity.command:run",
        ),
        Command(
            "train",
            "Fine-tune a policy on a task with an updater (ppo, reinforce, grpo, sft, sft_kl, rft, oracle_sft, "
            "distill).",
            "vla_cl.updaters.command:TrainConfig",
            "vla_cl.updaters.command:run",
        ),
        Command(
            "pretrain",
            "Train a multi-task pi0 by behaviour cloning on scripted-expert demonstrations, then measure it on a suite.",
            "vla_cl.updaters.pretrain:PretrainConfig",
            "vla_cl.updaters.pretrain:run",
        ),
        Command(
            "eval",
            "Evaluate a policy (checkpoint, expert or random) on a suite: success per task and axis with intervals.",
            "vla_cl.evaluation.command:EvalConfig",
            "vla_cl.evaluation.command:run",
        ),
        Command(
            "continual",
            "Fine-tune on tasks one after another, evaluating the suite after each stage (LIBERO / Continual "
            "World metrics).",
            "vla_cl.evaluation.continual_command:ContinualConfig",
            "vla_cl.evaluation.continual_command:run",
        ),
        Command(
            "razor",
            "The main job: RL's Razor on robots (pi0, RL vs SFT sweep, retention, the forgetting law, report).",
            "vla_cl.razor.config:RazorConfig",
            "vla_cl.razor.pipeline:run",
        ),
        Command(
            "llm",
            "RL's Razor on language models: GRPO vs SFT (TRL) on a new task, forward KL, lm-eval retention, the "
            "forgetting law and a report.",
            "vla_cl.llm_track.config:LLMConfig",
            "vla_cl.llm_track.pipeline:run",
        ),
    )
}
