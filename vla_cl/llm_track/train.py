"""One fine-tuning run of a language model on a new task: TRL's GRPOTrainer or SFTTrainer does the optimisation.

The project adds what TRL does not: pi0 is the model with its LoRA adapter disabled; ``KLCallback`` logs
KL(pi0 || pi) on a fixed probe of pi0's responses during training; ``SnapshotCallback`` saves the adapter at
chosen steps (mid-training points for the forgetting law) atomically into the run folder; and a run that
finished is marked ``done.json`` so that a later invocation reuses it instead of training again.

``trainer.kl_budget=B`` (GRPO and SFT alike) keeps the probe's KL(pi0 || pi) at or under B by early stopping
(``KLBudgetCallback``): TRL owns the optimisation, and SFTTrainer has no KL term an adaptive coefficient could
move (the robots' loop has one, ``vla_cl.updaters.budget``). At the first measurement over B the adapter is put
back to the last measurement within it and training ends; that adapter is the run's final one (saved as
``step-<steps>``, ``done.json`` says where it stopped) and snapshots planned after the stop are not taken.
Measure often (``trainer.kl_every``) for a tight budget: the adapter can only go back to a measured step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from vla_cl.config import option, require, require_choice
from vla_cl.files import write_json_atomic
from vla_cl.llm_track.kl import KLCallback, Responses
from vla_cl.llm_track.models import ModelConfig, load, with_adapter
from vla_cl.llm_track.rewards import trl_reward

METHODS = ("grpo", "sft")
FAMILY = {"grpo": "rl", "sft": "sft"}  # the forgetting law's name for each method's family


@dataclasses.dataclass
class RunSpec:
    """One point of the sweep: a method, a learning rate and a budget."""

    method: str = option("grpo", "grpo (TRL GRPOTrainer) or sft (TRL SFTTrainer)")
    lr: float = option(1e-4, "AdamW peak learning rate")
    steps: int = option(20, "optimizer steps")
    snapshots: list = option([], "steps whose adapter is also kept as a mid-training point")

    def __post_init__(self) -> None:
        require_choice("run.method", self.method, METHODS)
        require(math.isfinite(self.lr) and self.lr > 0, "run.lr", self.lr, "a finite number > 0")
        require(isinstance(self.steps, int) and self.steps >= 1, "run.steps", self.steps, "an int >= 1")
        bad = [s for s in self.snapshots if not (isinstance(s, int) and 1 <= s < self.steps)]
        require(not bad, "run.snapshots", self.snapshots, f"ints in 1..{self.steps - 1}")

    @property
    def key(self) -> str:
        return f"{self.method}_lr{self.lr:g}".replace(".", "p").replace("-", "m")



def points_of(runs: list[dict]) -> list[dict]:
    """The sweep's points: every adapter each run keeps (its snapshots and its last step, where ``train_run``
    saves them), each with what the law and the report group it by. ``runs`` are the sweep's records (key,
    method, lr, steps, snapshots, folder)."""
    return [{"key": f"{r['key']}__step{step}", "run": r["key"], "method": r["method"], "family": FAMILY[r["method"]],
             "setting": f"lr={r['lr']:g}", "step": step, "final": step == r["steps"],
             "adapter": str(Path(r["folder"]) / "adapters" / f"step-{step}")}
            for r in runs for step in [*r["snapshots"], r["steps"]]]

@dataclasses.dataclass
class TrainerSettings:
    """What every run of a sweep shares (the paper's settings on the GPU preset; see configs/llm/preset)."""

    group_size: int = option(8, "GRPO: completions sampled per prompt (the paper: 64)")
    prompts_per_step: int = option(2, "GRPO: prompts per optimizer step")
    sft_batch: int = option(8, "SFT: examples per optimizer step")
    max_completion_tokens: int = option(12, "GRPO: the longest sampled completion")
    temperature: float = option(1.0, "GRPO: sampling temperature")
    beta: float = option(0.0, "GRPO: KL coefficient against pi0 (the paper: 0)")
    warmup_steps: int = option(0, "learning-rate warm-up steps (the paper: 50)")
    scheduler: str = option("constant_with_warmup", "learning-rate schedule after warm-up (transformers' names)")
    max_grad_norm: float = option(1.0, "gradient-norm clip (the paper: 1)")
    kl_every: int = option(8, "optimizer steps between KL(pi0 || pi) measurements during training")
    kl_budget: float | None = option(None, "stop training before the probe's KL(pi0 || pi) exceeds this many nats "
                                     "(None = no budget; the adapter goes back to the last measurement within it)")
    kl_dtype: str = option("float64", "precision of the KL measurements: float64, or float32 for large vocabularies "
                           "and long responses on a GPU")
    bf16: bool = option(False, "train in bfloat16 (GPU)")

    def __post_init__(self) -> None:
        for name in ("group_size", "prompts_per_step", "sft_batch", "max_completion_tokens", "kl_every"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"trainer.{name}", value, "an int >= 1")
        require(self.kl_dtype in ("float64", "float32"), "trainer.kl_dtype", self.kl_dtype, "float64 or float32")
        require(self.group_size >= 2, "trainer.group_size", self.group_size, ">= 2 (GRPO compares a group)")
        if self.kl_budget is not None:
            budget = self.kl_budget
            require(isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
                    and budget > 0, "trainer.kl_budget", budget, "a finite number of nats > 0 (None = no budget)")
        require(self.temperature > 0 and self.beta >= 0 and self.max_grad_norm > 0 and self.warmup_steps >= 0,
                "trainer", dataclasses.asdict(self), "temperature > 0, beta >= 0, max_grad_norm > 0, warmup >= 0")


class SnapshotCallback(TrainerCallback):
    """Saves the adapter at the chosen steps and at the end into ``folder/step-<N>`` (written aside, then renamed)."""

    def __init__(self, folder: Path, steps: list[int]):
        self.folder, self.steps = folder, set(steps)

    def save(self, model: Any, step: int) -> None:
        target = self.folder / f"step-{step}"
        if target.exists():
            return
        staging = self.folder / f".step-{step}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        staging.rename(target)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_training_stop:  # a KL budget ended the run: this is its final adapter
            self.save(model, state.max_steps)
        elif state.global_step in self.steps or state.global_step >= state.max_steps:
            self.save(model, state.global_step)


class KLBudgetCallback(TrainerCallback):
    """Early stopping on the probe's KL (see the module docstring); runs after ``KLCallback`` and before
    ``SnapshotCallback``. ``history`` holds (step, KL, within budget) per measurement."""

    def __init__(self, kl: KLCallback, budget: float):
        self.kl, self.budget = kl, float(budget)
        self.saved: dict[str, torch.Tensor] | None = None
        self.stopped_at: int | None = None

    def _keep(self, model: Any) -> None:
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._keep(model)  # pi0 (KL 0) is within any budget

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = self.kl.history[-1] if self.kl.history else None
        if last is None or last["step"] != state.global_step:
            return  # not measured at this step
        if last["forward_kl"] <= self.budget:
            self._keep(model)
            return
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.saved:
                    param.copy_(self.saved[name])
        self.stopped_at = state.global_step
        control.should_training_stop = True


def _common_args(spec: RunSpec, settings: TrainerSettings, folder: Path, seed: int) -> dict[str, Any]:
    return {"output_dir": str(folder / "trainer"), "learning_rate": spec.lr, "max_steps": spec.steps,
            "warmup_steps": settings.warmup_steps, "lr_scheduler_type": settings.scheduler,
            "max_grad_norm": settings.max_grad_norm, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
            "seed": seed, "use_cpu": not torch.cuda.is_available(), "bf16": settings.bf16,
            "gradient_checkpointing": False, "disable_tqdm": True}


def make_trainer(spec: RunSpec, settings: TrainerSettings, model: Any, tokenizer: Any, reward: str,
                 train: list[dict], folder: Path, seed: int, callbacks: list) -> Any:
    from datasets import Dataset

    common = _common_args(spec, settings, folder, seed)
    if spec.method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        data = Dataset.from_list([{"prompt": e["messages"], "answer": e["answer"]} for e in train])
        args = GRPOConfig(**common, num_generations=settings.group_size,
                          per_device_train_batch_size=settings.group_size * settings.prompts_per_step,
                          max_completion_length=settings.max_completion_tokens, temperature=settings.temperature,
                          beta=settings.beta, disable_dropout=True)
        return GRPOTrainer(model=model, reward_funcs=trl_reward(reward), args=args, train_dataset=data,
                           processing_class=tokenizer, callbacks=callbacks)
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": e["messages"], "completion": [{"role": "assistant", "content": e["target"]}]}
                              for e in train])
    args = SFTConfig(**common, per_device_train_batch_size=settings.sft_batch, completion_only_loss=True,
                     max_length=1024)
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)


def train_run(spec: RunSpec, settings: TrainerSettings, model_config: ModelConfig, reward: str, train: list[dict],
              probe: Responses, folder: Path, seed: int) -> dict:
    """Train (or reuse a finished run in ``folder``); returns its summary (adapters by step, logs, KL history)."""
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished run restarts from pi0
    folder.mkdir(parents=True)
    model, tokenizer = load(model_config, seed)
    model = with_adapter(model, model_config)
    kl = KLCallback(probe, settings.kl_every, folder / "kl.jsonl", getattr(torch, settings.kl_dtype))
    budget = KLBudgetCallback(kl, settings.kl_budget) if settings.kl_budget is not None else None
    snapshots = SnapshotCallback(folder / "adapters", spec.snapshots)
    (folder / "adapters").mkdir()
    trainer = make_trainer(spec, settings, model, tokenizer, reward, train, folder, seed,
                           [kl, *([budget] if budget else []), snapshots])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # the logs go to done.json; the pipeline prints a summary
        trainer.remove_callback(noisy)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history]
    kept = [s for s in spec.snapshots if budget is None or budget.stopped_at is None or s < budget.stopped_at]
    summary = {"key": spec.key, "method": spec.method, "lr": spec.lr, "steps": spec.steps, "seconds": seconds,
               "snapshots": kept,
               "adapters": {str(s): str(folder / "adapters" / f"step-{s}") for s in [*kept, spec.steps]},
               "kl_history": kl.history, "log_history": logs}
    if budget is not None:
        summary["kl_budget"] = {"budget": budget.budget, "stopped_at": budget.stopped_at,
                                "final_kl": next(h["forward_kl"] for h in reversed(kl.history)
                                                 if h["forward_kl"] <= budget.budget)}
    shutil.rmtree(folder / "trainer", ignore_errors=True)
    write_json_atomic(done, summary)
    return summary
