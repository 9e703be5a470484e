"""Reward functions for new tasks, each mapping a completion's text and the example's answer to a score in [0, 1].

* ``math``: exact match of the final answer: the last ``\\boxed{...}`` if there is one, else the last number
  in the text; numbers compare by value (``1,000`` = ``1000.0``; ``3/4`` = ``0.75``), other answers as
  whitespace- and case-normalised strings.
* ``multiple_choice``: the chosen option letter: "The answer is (B)", "B. Sodium", "B" ... (the first
  standalone capital letter among the options, preferring an explicit "answer is X"), equal to the key.
* ``short_answer``: the reply names the answer (as a whole word; case-insensitively, except answers of one or
  two characters such as chemical symbols, matched exactly) and none of the example's ``reject`` list (other
  plausible answers), so that listing candidates earns nothing. The answer is the plain string, or JSON
  ``{"answer": ..., "reject": [...]}``.
* ``tool_call``: graded: 0.2 for a JSON object with a ``name`` (found as the whole reply, inside a code
  fence or ``<tool_call>`` tags, or as the first ``{...}`` in the text), 0.3 more for the right tool name,
  and the remaining 0.5 shared over the expected arguments, each matching by value (numbers by value,
  strings case-insensitively). Exactly right scores 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

_BOXED = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _as_number(text: str) -> Fraction | None:
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def math_answer(text: str) -> str | None:
    """The final answer a completion gives (see the module docstring), or None."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def math_reward(text: str, answer: str) -> float:
    given = math_answer(text)
    if given is None:
        return 0.0
    a, b = _as_number(given), _as_number(str(answer))
    if a is not None and b is not None:
        return float(a == b)
    normalise = lambda s: re.sub(r"\s+", "", s).lower()
    return float(normalise(given) == normalise(str(answer)))


def choice_letter(text: str, letters: str = "ABCD") -> str | None:
    explicit = re.search(rf"answer\s*(?:is|:)?\s*\(?([{letters}])\b", text, re.IGNORECASE)
    if explicit:
        return explicit.group(1).upper()
    first = re.search(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", text)
    return first.group(1) if first else None


def multiple_choice_reward(text: str, answer: str) -> float:
    return float(choice_letter(text) == str(answer).strip().upper())


def _names(text: str, word: str) -> bool:
    flags = 0 if len(word) <= 2 else re.IGNORECASE
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, flags) is not None


def short_answer_reward(text: str, answer: str) -> float:
    spec = json.loads(answer) if str(answer).lstrip().startswith("{") else {"answer": str(answer), "reject": []}
    return float(_names(text, spec["answer"]) and not any(_names(text, other) for other in spec.get("reject", [])))


def parse_call(text: str) -> dict | None:
    """The first JSON object with a ``name`` in the text (whole, fenced, tagged or embedded), or None."""
    candidates = [text.strip()]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidates += re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.DOTALL)
    start = text.find("{")
    if start >= 0:
        depth = 0
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                candidates.append(text[start:i + 1])
                break
    for candidate in candidates:
        try:
            call = json.loads(candidate)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            return call
    return None


def _same_value(given: Any, expected: Any) -> bool:
    if isinstance(given, bool) or isinstance(expected, bool):
        return given is expected
    a, b = _as_number(str(given)), _as_number(str(expected))
    if a is not None and b is not None:
        return a == b
    if isinstance(expected, str) and isinstance(given, str):
        return given.strip().lower() == expected.strip().lower()
    return given == expected


def tool_call_reward(text: str, answer: str | dict) -> float:
    expected = json.loads(answer) if isinstance(answer, str) else answer
    call = parse_call(text)
    if call is None:
        return 0.0
    score = 0.2
    if call["name"] != expected["name"]:
        return score
    score += 0.3
    wanted = expected.get("arguments") or {}
    given = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
    if not wanted:
        return score + 0.5
    hits = sum(1 for key, value in wanted.items() if key in given and _same_value(given[key], value))
    return score + 0.5 * hits / len(wanted)


REWARDS: dict[str, Callable[[str, Any], float]] = {
    "math": math_reward,
    "multiple_choice": multiple_choice_reward,
    "short_answer": short_answer_reward,
    "tool_call": tool_call_reward,
}


def completion_text(completion: Any) -> str:
    """A TRL completion (plain text, or a conversational list of messages) as text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    raise TypeError(f"a completion must be text or a list of messages, got {type(completion).__name__}")


def trl_reward(kind: str) -> Callable[..., list[float]]:
    """The reward as TRL's GRPOTrainer calls it: (completions, answer=[...], **columns) -> scores."""
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}: use one of {', '.join(REWARDS)}")
    score = REWARDS[kind]

    def reward(completions: list, answer: list, **_: Any) -> list[float]:
        return [score(completion_text(c), a) for c, a in zip(completions, answer)]

    reward.__name__ = f"{kind}_reward"
    return reward
