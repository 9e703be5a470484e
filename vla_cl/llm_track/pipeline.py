"""``vla-cl llm``: RL's Razor on language models, end to end, one resumable stage after another.

    probes      pi0's responses: to held-out new-task prompts (the forward-KL probe) and to retention
                prompts (old-task predictors, pi0's Fisher)
    pi0_eval    pi0's new-task score and retention (lm-eval benchmarks, HumanEval)
    sweep       GRPO and SFT runs (TRL), KL(pi0 || pi) logged during training, adapters kept at the snapshot
                step and the end; a finished run is reused, an unfinished one restarts
    evaluation  every kept adapter: new-task score, retention, every predictor (one JSON per point, reused)
    law         the shared analysis (``vla_cl.evaluation.law``): R^2 per predictor, Pareto frontiers,
                matched comparisons, the finding
    report      summary.json and report.html (``vla_cl.llm_track.report``)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from vla_cl.evaluation import law as L
from vla_cl.files import write_json_atomic
from vla_cl.kl.compare import UNORDERED_PREDICTORS as PREDICTORS  # language tokens have no order
from vla_cl.llm_track.config import LLMConfig
from vla_cl.llm_track.kl import Responses, generate_responses
from vla_cl.llm_track.models import load, load_adapter, with_adapter
from vla_cl.llm_track.tasks import load_task
from vla_cl.llm_track.train import points_of
from vla_cl.runs import RunDir
from vla_cl.stages import Stages, log, resolve_workers


def old_task_examples(n: int, seed: int) -> list[dict]:
    """Retention prompts as chat messages: questions of the MMLU stand-in and contexts of the HellaSwag one."""
    from vla_cl.llm_track.retention import BENCHMARKS

    rows = []
    for line in BENCHMARKS["mmlu"].data_path.read_text().splitlines():
        r = json.loads(line)
        options = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"]))
        rows.append({"id": r["id"], "messages": [{"role": "user", "content": f"{r['question']}\n{options}"}]})
    for line in BENCHMARKS["hellaswag"].data_path.read_text().splitlines():
        r = json.loads(line)
        rows.append({"id": r["id"], "messages": [{"role": "user", "content": f"Continue: {r['ctx']}"}]})
    random.Random(seed).shuffle(rows)
    return rows[:n]


def _save_probe(batch: Responses, path: Path) -> None:
    torch.save({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                "prompt_length": batch.prompt_length, "response_mask": batch.response_mask,
                "prompt_ids": batch.prompt_ids}, path)


def _load_probe(path: Path) -> Responses:
    data = torch.load(path, weights_only=True)
    return Responses(data["input_ids"], data["attention_mask"], data["prompt_length"], data["response_mask"],
                     data["prompt_ids"])


def stage_probes(config: LLMConfig, held: list[dict], folder: Path) -> dict:
    model, tokenizer = load(config.model, config.seed)
    new = generate_responses(model, tokenizer, held[: config.kl_prompts], config.kl_samples, config.kl_tokens,
                             seed=config.seed)
    old = generate_responses(model, tokenizer, old_task_examples(config.old_prompts, config.seed), 1,
                             config.kl_tokens, seed=config.seed + 1)
    _save_probe(new, folder / "new.pt")
    _save_probe(old, folder / "old.pt")
    return {"new_responses": int(new.input_ids.shape[0]), "old_responses": int(old.input_ids.shape[0]),
            "new_mean_tokens": float(new.response_mask.sum(-1).double().mean())}


def _evaluate(config: LLMConfig, model: Any, tokenizer: Any, held: list[dict], folder: Path) -> dict:
    from vla_cl.llm_track import measure
    from vla_cl.llm_track.code_eval import humaneval_problems

    problems = humaneval_problems(limit=config.humaneval_problems) if "humaneval" in config.retention else []
    new = measure.new_task_scores(model, tokenizer, held, config.task.reward, config.eval_tokens,
                                  config.eval_samples, config.seed)
    kept = measure.retention(model, tokenizer, list(config.retention), config.retention_source,
                             config.retention_limit or None, problems, config.humaneval_tokens, folder,
                             config.eval_tokens, config.eval_samples, config.seed)
    return {"new_task": new, "retention": kept}


def stage_pi0_eval(config: LLMConfig, held: list[dict], folder: Path) -> dict:
    model, tokenizer = load(config.model, config.seed)
    result = _evaluate(config, model, tokenizer, held, folder)
    write_json_atomic(folder / "result.json", result)
    _print_scores("pi0", result)
    return {"new_task_score": result["new_task"]["score"],
            "retention": {k: v["score"] for k, v in result["retention"].items()}}


def _print_scores(key: str, result: dict) -> None:
    kept = ", ".join(f"{k} {v['score']:.3f}" for k, v in result["retention"].items())
    log(f"[llm]   {key}: new task {result['new_task']['score']:.3f}; retention {kept}")


def stage_sweep(config: LLMConfig, train: list[dict], probes: Path, folder: Path) -> list[dict]:
    from vla_cl.llm_track.train import train_run

    probe = _load_probe(probes / "new.pt")
    out = []
    for spec in config.runs():
        log(f"[llm]   {spec.key}: {spec.steps} steps")
        summary = train_run(spec, config.trainer, config.model, config.task.reward, train, probe,
                            folder / spec.key, config.seed)
        rewards = [h["reward"] for h in summary["log_history"] if "reward" in h]
        quarter = max(1, len(rewards) // 4)
        last = summary["kl_history"][-1]
        trend = (f"; mean training reward, first {quarter} steps {sum(rewards[:quarter]) / quarter:.2f}, last "
                 f"{quarter} {sum(rewards[-quarter:]) / quarter:.2f}" if rewards else "")
        log(f"[llm]   {spec.key}: {summary['seconds']:.0f} s; KL(pi0 || pi) on the probe {last['forward_kl']:.4f} "
            f"+- {last['forward_kl_se']:.4f}{trend}")
        out.append({"key": spec.key, "method": spec.method, "lr": spec.lr, "steps": spec.steps,
                    "snapshots": summary.get("snapshots", spec.snapshots), "folder": str(folder / spec.key)})
        if summary.get("kl_budget"):
            b = summary["kl_budget"]
            log(f"[llm]   {spec.key}: KL budget {b['budget']:g}: "
                + (f"stopped at step {b['stopped_at']}, the adapter back to KL {b['final_kl']:.4f}"
                   if b["stopped_at"] else f"kept to the end (KL {b['final_kl']:.4f})"))
    return out


def _evaluate_points(config: LLMConfig, held: list[dict], points: list[dict], probes: Path, folder: Path,
                     threads: int) -> None:
    """Evaluate ``points`` one after another in this process (a worker of ``stage_evaluation``)."""
    from vla_cl.llm_track.measure import Predictors

    torch.set_num_threads(threads)
    model, tokenizer = load(config.model, config.seed)
    predictors = Predictors(with_adapter(model, config.model), _load_probe(probes / "new.pt"),
                            _load_probe(probes / "old.pt"), config.seed, dtype=getattr(torch, config.trainer.kl_dtype))
    for point in points:
        base, tokenizer = load(config.model, config.seed)
        tuned = load_adapter(base, Path(point["adapter"]))
        result = _evaluate(config, tuned, tokenizer, held, folder / "work" / point["key"])
        result["predictors"] = predictors.measure(tuned)
        write_json_atomic(folder / f"{point['key']}.json", {**point, **result})
        _print_scores(point["key"], result)


def _die_with_parent() -> None:
    """Worker initializer: the kernel kills this worker when the process that started it dies (Linux), so a
    killed run leaves no evaluation running behind it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stage_evaluation(config: LLMConfig, held: list[dict], runs: list[dict], probes: Path, folder: Path) -> dict:
    """Every kept adapter, split round-robin over ``workers`` processes that share the cores; a point whose JSON
    exists (from an interrupted earlier run) is not evaluated again. On 2 cores one process with 2 threads was
    faster than 2 processes with one each (measured), hence the default of 1."""
    from vla_cl.workers import pool as worker_pool

    pending = [p for p in points_of(runs) if not (folder / f"{p['key']}.json").exists()]
    workers = min(resolve_workers(config.workers), max(1, len(pending)))
    if workers == 1:
        _evaluate_points(config, held, pending, probes, folder, torch.get_num_threads())
    else:
        threads = max(1, resolve_workers(0) // workers)
        with worker_pool(workers, initializer=_die_with_parent) as pool:
            jobs = [pool.submit(_evaluate_points, config, held, pending[i::workers], probes, folder, threads)
                    for i in range(workers)]
            for job in jobs:
                job.result()
    return {"points": len(points_of(runs)), "evaluated_now": len(pending), "workers": workers}


def analyse(config: LLMConfig, runs: list[dict], pi0_result: dict, evaluations: Path, folder: Path) -> dict:
    """The shared law over pi0 and every point; the retention tasks are the benchmarks."""
    benchmarks = list(pi0_result["retention"])
    outcomes = lambda result: {b: result["retention"][b]["per_example"] for b in benchmarks}
    pi0_outcomes = outcomes(pi0_result)
    zero = {name: 0.0 for name in PREDICTORS} | {"cka": 1.0, "cka_old": 1.0}
    pi0 = L.make_point("pi0", "pi0", "pi0", "", 0, True, pi0_result["new_task"]["score"], pi0_outcomes, pi0_outcomes,
                       zero, new_outcomes=pi0_result["new_task"].get("per_example"))
    points = []
    for point in points_of(runs):
        result = json.loads((evaluations / f"{point['key']}.json").read_text())
        predictors = {k: v for k, v in result["predictors"].items() if k in PREDICTORS}
        points.append(L.make_point(point["key"], point["method"], point["family"], point["setting"], point["step"],
                                   point["final"], result["new_task"]["score"], outcomes(result), pi0_outcomes,
                                   predictors, new_outcomes=result["new_task"].get("per_example")))
    levels = [round(pi0.new_success + d, 2) for d in (0.1, 0.2, 0.3, 0.4) if pi0.new_success + d <= 1.0]
    out = {**L.analyse(pi0, points, benchmarks, levels, score="new-task reward", retention="mean retention score"),
           "new_task": config.task.name}
    write_json_atomic(folder / "law.json", out)
    for name in PREDICTORS:
        value = out["r2"][name]
        log(f"[llm]   R^2 {name}: {'n/a' if value is None else f'{value:.3f}'}")
    log(f"[llm]   {out['noise_ceiling_words']}")
    log(f"[llm]   {out['finding']['statement']}")
    return out


def run(config: LLMConfig, run_dir: RunDir) -> int:
    from vla_cl.llm_track import report

    # Progress bars of lm-eval, datasets and transformers would bury the stage lines (worker processes inherit it).
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.manual_seed(config.seed)
    train, held = load_task(config.task, config.seed)
    stages = Stages(run_dir, prefix="llm")
    probes = run_dir.path / "probes"
    evaluations = run_dir.path / "evaluation"
    stages("probes", f"pi0 ({config.model.name}) responses for the KL probes", lambda f: stage_probes(config, held, f))
    stages("pi0_eval", "pi0 on the new task and the retention benchmarks", lambda f: stage_pi0_eval(config, held, f))
    runs = stages("sweep", f"GRPO and SFT on {config.task.name} ({len(config.runs())} runs)",
                  lambda f: stage_sweep(config, train, probes, f))
    stages("evaluation", "every kept adapter: new task, retention, predictors",
           lambda f: stage_evaluation(config, held, runs, probes, f))
    pi0_result = json.loads((run_dir.path / "pi0_eval" / "result.json").read_text())
    law = stages("law", "forgetting law over the sweep", lambda f: analyse(config, runs, pi0_result, evaluations, f))
    stages("report", "summary.json, report.html", lambda f: report.write(config, law, pi0_result, runs, run_dir))
    stages.finish(law["finding"]["statement"], run_dir.path / "report.html")
    return 0
