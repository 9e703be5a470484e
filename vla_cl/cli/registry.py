"""The table of ``vla-cl`` subcommands.

Each entry names where its config dataclass and its ``run(config, run_dir)`` function live, so that
``vla-cl --help`` lists every verb without importing torch, ManiSkill or transformers. The table is a
:class:`vla_cl.registry.Registry` of :class:`Command` entries, listed in the order below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vla_cl.registry import Registry, check_reference, load_reference


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking (config, RunDir) and returning an exit status or None
    # "module:function" returning the class the command line composes into, built when used (train's updater
    # options come from the updater registry as it is then); None: the config class itself
    schema: str | None = None

    def __post_init__(self) -> None:
        check_reference(self.config)
        check_reference(self.run)
        if self.schema is not None:
            check_reference(self.schema)

    def load_config_class(self) -> type:
        return load_reference(self.config)

    def load_schema(self) -> type:
        """The config class as the command line sees it (a subclass of the config class, or that class)."""
        return self.load_config_class() if self.schema is None else load_reference(self.schema)()

    def load_run(self) -> Callable[..., Any]:
        return load_reference(self.run)


COMMANDS: Registry[Command] = Registry(
    "command",
    {
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
                "vla_cl.evaluation.render:RenderConfig",
                "vla_cl.evaluation.render:run",
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
                schema="vla_cl.updaters.command:train_schema",
            ),
            Command(
                "pretrain",
                "Train a multi-task pi0 by behaviour cloning on scripted-expert demonstrations, then measure it on a suite.",
                "vla_cl.razor.pretrain:PretrainConfig",
                "vla_cl.razor.pretrain:run",
            ),
            Command(
                "eval",
                "Evaluate a policy (checkpoint, expert or random) on a suite: success per task and axis with intervals.",
                "vla_cl.evaluation.command:EvalConfig",
                "vla_cl.evaluation.command:run",
            ),
            Command(
                "predict-forgetting",
                "Predict a fine-tuned policy's forgetting from the new task alone: one predictor measured on new-task "
                "states, the law a razor sweep fitted, a 95 % prediction interval.",
                "vla_cl.razor.predict:PredictConfig",
                "vla_cl.razor.predict:run",
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
    },
)
