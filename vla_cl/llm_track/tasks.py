"""New tasks as config: where the examples come from, how a prompt is built, and which reward scores a reply.

Every source is turned into rows of one schema: ``id``, ``messages`` (the chat prompt), ``answer`` (what the
reward compares against) and ``target`` (the reference reply SFT trains on). Sources:

* ``local``: a JSONL file with ``id``, ``question``, ``answer``, ``target``, ``split`` (train / eval) and
  optionally ``choices`` (multiple choice), ``reject`` (short answers that must not be named) or ``tools``
  (tool calls); the project ships four
  (``vla_cl/llm_track/data/tasks``, written by ``scripts/make_llm_tasks.py``), one per reward kind.
* ``hub``: a Hugging Face dataset (or a JSON file by URL) read by ``datasets`` with a named row adapter; the
  presets are the paper's three new tasks (RL's Razor, arXiv 2509.04259, section 4 / appendix):
  Open-Reasoner-Zero math (``orz``), SciKnowEval chemistry level L3 (``sciknoweval``) and ToolAlpaca
  (``toolalpaca``). These need the network; offline they fail at once naming the local alternative.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vla_cl.config import option, require, require_choice
from vla_cl.llm_track.rewards import REWARDS

DATA = Path(__file__).resolve().parent / "data" / "tasks"
LETTERS = "ABCDEFGHIJ"
INSTRUCTIONS = {
    "multiple_choice": "Answer with the letter of the correct option.",
    "math": "Give the final answer as \\boxed{answer}.",
    "tool_call": 'Reply only with the tool call as JSON: {"name": ..., "arguments": {...}}.',
    "short_answer": "Answer in a few words.",
}


@dataclasses.dataclass
class TaskConfig:
    """A new task: its examples, prompt and reward."""

    name: str = option("elements", "a label for reports")
    source: str = option("local", "local (a JSONL file) or hub (a Hugging Face dataset or JSON URL)")
    path: str = option("elements.jsonl", "local: the JSONL file (relative names: the project's bundled tasks)")
    dataset: str = option("", "hub: dataset id, or a URL of a JSON file")
    subset: str = option("", "hub: dataset configuration name")
    split: str = option("train", "hub: the split to read")
    adapter: str = option("", "hub: the row adapter (orz, sciknoweval, toolalpaca)")
    reward: str = option("short_answer", "math, multiple_choice, short_answer or tool_call")
    system: str = option("You are a helpful assistant. Answer briefly.", "system message of every prompt ('' for none)")
    n_train: int = option(0, "training examples used (0: all)")
    n_eval: int = option(24, "held-out examples the new-task score is measured on")

    def __post_init__(self) -> None:
        require_choice("task.source", self.source, ("local", "hub"))
        require_choice("task.reward", self.reward, REWARDS)
        if self.source == "local":
            require(self.path.endswith(".jsonl"), "task.path", self.path, "a .jsonl file")
        else:
            require(bool(self.dataset), "task.dataset", self.dataset, "a dataset id or JSON URL (task.source=hub)")
            require_choice("task.adapter", self.adapter, ADAPTERS)
        require(isinstance(self.n_train, int) and self.n_train >= 0, "task.n_train", self.n_train, "an int >= 0")
        require(isinstance(self.n_eval, int) and self.n_eval >= 1, "task.n_eval", self.n_eval, "an int >= 1")

    def file(self) -> Path:
        path = Path(self.path).expanduser()
        return path if path.is_absolute() or path.exists() else DATA / self.path


def user_message(row: dict, reward: str) -> str:
    parts = [row["question"].strip()]
    if row.get("tools"):
        parts.append("Tools:\n" + "\n".join(json.dumps(t) for t in row["tools"]))
    if row.get("choices"):
        parts.append("\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"])))
    parts.append(INSTRUCTIONS[reward])
    return "\n".join(parts)


def to_example(row: dict, config: TaskConfig) -> dict:
    messages = ([{"role": "system", "content": config.system}] if config.system else [])
    messages.append({"role": "user", "content": user_message(row, config.reward)})
    answer = json.dumps({"answer": row["answer"], "reject": row["reject"]}) if row.get("reject") else str(row["answer"])
    return {"id": str(row["id"]), "messages": messages, "answer": answer, "target": str(row["target"])}


def _read_local(config: TaskConfig) -> list[dict]:
    path = config.file()
    if not path.is_file():
        bundled = ", ".join(sorted(p.name for p in DATA.glob("*.jsonl")))
        raise FileNotFoundError(f"task file {path} does not exist: pass task.path=FILE.jsonl, or a bundled task ({bundled})")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{n} is not valid JSON ({error}); each line must be one example") from error
        missing = [k for k in ("id", "question", "answer", "target") if k not in row]
        if missing:
            raise ValueError(f"{path}:{n} lacks {', '.join(missing)}: every row needs id, question, answer, target")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ hub adapters


def _orz(record: Any, i: int) -> dict | None:
    """Open-Reasoner-Zero: [{"from": "human", "value": question}, {"from": "assistant", "ground_truth":
    {"value": answer}}]. No worked solutions: SFT trains on the boxed answer alone."""
    turns = record if isinstance(record, list) else record.get("conversations") or record.get("0")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    question, truth = turns[0].get("value"), (turns[1].get("ground_truth") or {}).get("value")
    if not question or truth is None:
        return None
    return {"id": f"orz-{i}", "question": question, "answer": str(truth), "target": f"\\boxed{{{truth}}}"}


def _sciknoweval(record: dict, i: int) -> dict | None:
    """SciKnowEval: {"question", "choices": {"text": [...], "label": [...]}, "answerKey", "type",
    "details": {"level": "L3", ...}}; multiple-choice L3 questions only."""
    details = record.get("details") or {}
    choices = (record.get("choices") or {}).get("text")
    if details.get("level") != "L3" or not choices or not str(record.get("type", "")).startswith("mcq"):
        return None
    key = str(record.get("answerKey", "")).strip()
    if key not in LETTERS[: len(choices)]:
        return None
    return {"id": f"sciknoweval-{i}", "question": record["question"], "choices": list(choices), "answer": key,
            "target": f"{key}. {choices[LETTERS.index(key)]}"}


def _toolalpaca(record: dict, i: int) -> list[dict]:
    """ToolAlpaca: one tool per record ({"Name", "Description", "Function_Description", "Instances": [{"input",
    "intermediate_steps": [[[action, action_input, thought], observation], ...]}]}); each instance's first
    call is the answer."""
    tool = {"name": record.get("Name", ""), "description": record.get("Description", ""),
            "functions": record.get("Function_Description", {})}
    rows = []
    for j, instance in enumerate(record.get("Instances") or []):
        steps = instance.get("intermediate_steps") or []
        if not steps or not steps[0] or len(steps[0][0]) < 2:
            continue
        action, action_input = steps[0][0][0], steps[0][0][1]
        try:
            arguments = json.loads(action_input) if isinstance(action_input, str) else action_input
        except json.JSONDecodeError:
            continue
        call = json.dumps({"name": action, "arguments": arguments if isinstance(arguments, dict) else {}})
        rows.append({"id": f"toolalpaca-{i}-{j}", "question": instance["input"], "tools": [tool], "answer": call,
                     "target": call})
    return rows


ADAPTERS: dict[str, Callable[[Any, int], Any]] = {"orz": _orz, "sciknoweval": _sciknoweval, "toolalpaca": _toolalpaca}


def _read_hub(config: TaskConfig) -> list[dict]:
    from vla_cl.hub import hub_unreachable
    from vla_cl.llm_track.models import ModelUnavailable

    why = hub_unreachable()
    if why:
        bundled = ", ".join(sorted(p.name for p in DATA.glob("*.jsonl")))
        raise ModelUnavailable(
            f"task {config.name!r} reads {config.dataset!r} from the network, which is not reachable ({why}). "
            f"Use a local task instead: task.source=local task.path=FILE.jsonl (bundled: {bundled}).")
    import datasets

    if config.dataset.startswith(("http://", "https://")):
        data = datasets.load_dataset("json", data_files=config.dataset, split=config.split)
    else:
        data = datasets.load_dataset(config.dataset, config.subset or None, split=config.split)
    adapt = ADAPTERS[config.adapter]
    rows: list[dict] = []
    for i, record in enumerate(data):
        made = adapt(record, i)
        rows.extend(made if isinstance(made, list) else [made] if made else [])
    if not rows:
        raise ValueError(f"{config.dataset} gave no usable rows through the {config.adapter!r} adapter")
    return rows


def load_task(config: TaskConfig, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples. Local files keep their split column; hub data is split at random (seeded)."""
    rows = _read_local(config) if config.source == "local" else _read_hub(config)
    if all("split" in r for r in rows):
        train = [r for r in rows if r["split"] == "train"]
        held = [r for r in rows if r["split"] != "train"][: config.n_eval]
    else:
        rows = sorted(rows, key=lambda r: str(r["id"]))
        random.Random(seed).shuffle(rows)
        held, train = rows[: config.n_eval], rows[config.n_eval :]
    if config.n_train:
        train = train[: config.n_train]
    if not train or not held:
        raise ValueError(f"task {config.name!r} has {len(train)} training and {len(held)} held-out examples; it needs "
                         "both (check the file's split column or lower task.n_eval)")
    return [to_example(r, config) for r in train], [to_example(r, config) for r in held]


def all_examples(config: TaskConfig) -> list[dict]:
    """Every row of a local task as an example (for a task used only to measure, such as a prior skill)."""
    return [to_example(r, config) for r in _read_local(config)]


PRESETS: dict[str, dict[str, Any]] = {
    "elements": {"name": "elements", "path": "elements.jsonl", "reward": "short_answer", "n_eval": 24},
    "capitals": {"name": "capitals", "path": "capitals.jsonl", "reward": "short_answer", "n_eval": 40},
    "elements_mc": {"name": "elements_mc", "path": "elements_mc.jsonl", "reward": "multiple_choice", "n_eval": 40},
    "arithmetic": {"name": "arithmetic", "path": "arithmetic.jsonl", "reward": "math", "n_eval": 60},
    "tool_calls": {"name": "tool_calls", "path": "tool_calls.jsonl", "reward": "tool_call", "n_eval": 50},
    # The paper's new tasks (need the network).
    "open_reasoner_zero": {
        "name": "open_reasoner_zero", "source": "hub", "adapter": "orz", "reward": "math", "n_eval": 500,
        "dataset": "https://raw.githubusercontent.com/Open-Reasoner-Zero/Open-Reasoner-Zero/main/data/"
                   "orz_math_57k_collected.json"},
    "sciknoweval_chemistry_l3": {
        "name": "sciknoweval_chemistry_l3", "source": "hub", "adapter": "sciknoweval", "reward": "multiple_choice",
        "dataset": "hicai-zju/SciKnowEval", "subset": "Chemistry", "split": "test", "n_eval": 500},
    "toolalpaca": {
        "name": "toolalpaca", "source": "hub", "adapter": "toolalpaca", "reward": "tool_call", "n_eval": 300,
        "dataset": "https://raw.githubusercontent.com/tangqiaoyu/ToolAlpaca/main/data/train_data.json"},
}


def preset(name: str, **overrides: Any) -> TaskConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown task preset {name!r}: use one of {', '.join(PRESETS)}")
    return TaskConfig(**{**PRESETS[name], **overrides})
