"""One fine-tuning run of a language model on a new task: TRL's GRPOTrainer or SFTTrainer does the optimisation.

The project adds what TRL does not: pi0 is the model with its LoRA adapter disabled; ``KLCallback`` logs
KL(pi0 || pi) on a fixed probe of pi0's responses during training; ``SnapshotCallback`` saves the adapter at
chosen steps (mid-training points for the forgetting law) atomically into the run folder; and a run that
finished is marked ``done.json`` so that a later invocation reuses it instead of training again.
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
    kl_dtype: str = option("float64", "precision of the KL measurements: float64, or float32 for large vocabularies "
                           "and long responses on a GPU")
    bf16: bool = option(False, "train in bfloat16 (GPU)")

    def __post_init__(self) -> None:
        for name in ("group_size", "prompts_per_step", "sft_batch", "max_completion_tokens", "kl_every"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"trainer.{name}", value, "an int >= 1")
        require(self.kl_dtype in ("float64", "float32"), "trainer.kl_dtype", self.kl_dtype, "float64 or float32")
        require(self.group_size >= 2, "trainer.group_size", self.group_size, ">= 2 (GRPO compares a group)")
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
        if state.global_step in self.steps or state.global_step >= state.max_steps:
            self.save(model, state.global_step)


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
    snapshots = SnapshotCallback(folder / "adapters", spec.snapshots)
    (folder / "adapters").mkdir()
    trainer = make_trainer(spec, settings, model, tokenizer, reward, train, folder, seed, [kl, snapshots])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # the logs go to done.json; the pipeline prints a summary
        trainer.remove_callback(noisy)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history]
    summary = {"key": spec.key, "method": spec.method, "lr": spec.lr, "steps": spec.steps, "seconds": seconds,
               "adapters": {str(s): str(folder / "adapters" / f"step-{s}") for s in [*spec.snapshots, spec.steps]},
               "kl_history": kl.history, "log_history": logs}
    shutil.rmtree(folder / "trainer", ignore_errors=True)
    write_json_atomic(done, summary)
    return summary
