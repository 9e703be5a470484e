"""Write the LLM track's small local new tasks (vla_cl/llm_track/data/tasks/*.jsonl), deterministically.

    python scripts/make_llm_tasks.py

Four tasks, one per reward kind, each with a train and an eval split (disjoint questions):
* elements.jsonl (short answer): the symbol of an element, or the element of a symbol, answered in words;
  a reply counts when it names the answer and none of three other elements' (``reject``). The embedded
  default's new task: SmolLM2-135M-Instruct knows part of it (about a quarter of sampled replies are right).
* capitals.jsonl (short answer): the capital of a country; not a training task but a prior skill the
  embedded default's retention suite checks (SmolLM2-135M-Instruct names most of these capitals).
* elements_mc.jsonl (multiple choice): the same facts and atomic numbers among 4 lettered options.
* arithmetic.jsonl (math, exact match): two-step word problems with integer answers.
* tool_calls.jsonl (tool call): a request and the tools on offer; the answer is the call (name + arguments).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "vla_cl" / "llm_track" / "data" / "tasks"

ELEMENTS = [
    (1, "H", "Hydrogen"), (2, "He", "Helium"), (3, "Li", "Lithium"), (4, "Be", "Beryllium"), (5, "B", "Boron"),
    (6, "C", "Carbon"), (7, "N", "Nitrogen"), (8, "O", "Oxygen"), (9, "F", "Fluorine"), (10, "Ne", "Neon"),
    (11, "Na", "Sodium"), (12, "Mg", "Magnesium"), (13, "Al", "Aluminium"), (14, "Si", "Silicon"),
    (15, "P", "Phosphorus"), (16, "S", "Sulfur"), (17, "Cl", "Chlorine"), (18, "Ar", "Argon"),
    (19, "K", "Potassium"), (20, "Ca", "Calcium"), (22, "Ti", "Titanium"), (24, "Cr", "Chromium"),
    (25, "Mn", "Manganese"), (26, "Fe", "Iron"), (27, "Co", "Cobalt"), (28, "Ni", "Nickel"), (29, "Cu", "Copper"),
    (30, "Zn", "Zinc"), (35, "Br", "Bromine"), (36, "Kr", "Krypton"), (47, "Ag", "Silver"), (50, "Sn", "Tin"),
    (53, "I", "Iodine"), (54, "Xe", "Xenon"), (74, "W", "Tungsten"), (78, "Pt", "Platinum"), (79, "Au", "Gold"),
    (80, "Hg", "Mercury"), (82, "Pb", "Lead"), (92, "U", "Uranium"),
]
LETTERS = "ABCD"


def elements(rng: random.Random) -> list[dict]:
    rows = []
    for number, symbol, name in ELEMENTS:
        for kind in ("symbol", "name", "number"):
            others = rng.sample([e for e in ELEMENTS if e[2] != name], 3)
            if kind == "symbol":
                question, right, wrong = f"Which element has the chemical symbol {symbol}?", name, [o[2] for o in others]
            elif kind == "name":
                question, right, wrong = f"What is the chemical symbol of {name.lower()}?", symbol, [o[1] for o in others]
            else:
                question, right, wrong = f"Which element has atomic number {number}?", name, [o[2] for o in others]
            choices = [right, *wrong]
            rng.shuffle(choices)
            letter = LETTERS[choices.index(right)]
            rows.append({"id": f"elements-mc-{kind}-{symbol}", "question": question, "choices": choices, "answer": letter,
                         "target": f"{letter}. {right}"})
    return rows


def elements_short(rng: random.Random) -> list[dict]:
    rows = []
    for _, symbol, name in ELEMENTS:
        others = rng.sample([e for e in ELEMENTS if e[2] != name], 3)
        rows.append({"id": f"elements-symbol-{symbol}", "question": f"What is the chemical symbol of {name.lower()}?",
                     "answer": symbol, "reject": [o[1] for o in others], "target": symbol})
        rows.append({"id": f"elements-name-{symbol}", "question": f"Which element has the chemical symbol {symbol}?",
                     "answer": name, "reject": [o[2] for o in others], "target": name})
    return rows


CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Cuba", "Havana"),
    ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("India", "New Delhi"),
    ("Mexico", "Mexico City"), ("Turkey", "Ankara"), ("Hungary", "Budapest"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Chile", "Santiago"),
    ("Colombia", "Bogota"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Iran", "Tehran"),
    ("Saudi Arabia", "Riyadh"), ("Ukraine", "Kyiv"), ("Czech Republic", "Prague"), ("Switzerland", "Bern"),
]


def capitals(rng: random.Random) -> list[dict]:
    rows = []
    for country, city in CAPITALS:
        others = rng.sample([c for _, c in CAPITALS if c != city], 3)
        rows.append({"id": f"capital-{country.lower().replace(' ', '-')}", "question": f"What is the capital of {country}?",
                     "answer": city, "reject": others, "target": city})
    return rows


def arithmetic(rng: random.Random) -> list[dict]:
    things = ["apples", "books", "marbles", "stamps", "pencils", "cards", "shells", "coins"]
    names = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
    rows = []
    for i in range(240):
        who, what = rng.choice(names), rng.choice(things)
        a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(2, 9)
        form = i % 3
        if form == 0:
            question, answer = f"{who} has {a} {what} and buys {b} more, then gives away {c}. How many {what} are left?", a + b - c
        elif form == 1:
            question, answer = f"{who} packs {c} boxes with {b} {what} each and has {a} {what} besides. How many {what} in all?", c * b + a
        else:
            question, answer = f"{who} had {a + b * c} {what} and shared {b * c} equally among {c} friends. How many did each friend get?", b
        rows.append({"id": f"arithmetic-{i:03d}", "question": question, "answer": str(answer),
                     "target": f"\\boxed{{{answer}}}"})
    return rows


TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city", "parameters": {"city": "string"}},
    {"name": "convert_currency", "description": "Convert an amount between currencies",
     "parameters": {"amount": "number", "from": "string", "to": "string"}},
    {"name": "set_timer", "description": "Start a timer", "parameters": {"minutes": "number"}},
    {"name": "translate", "description": "Translate text into a language", "parameters": {"text": "string", "language": "string"}},
]


def tool_calls(rng: random.Random) -> list[dict]:
    cities = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Denver", "Nairobi", "Madrid", "Hanoi", "Perth"]
    currencies = ["USD", "EUR", "JPY", "GBP", "INR"]
    words = ["good morning", "thank you", "where is the station", "see you tomorrow", "how much is it"]
    languages = ["French", "Spanish", "German", "Italian", "Japanese"]
    rows = []
    for i in range(200):
        kind = i % 4
        if kind == 0:
            city = rng.choice(cities)
            request, call = f"What's the weather like in {city} right now?", {"name": "get_weather", "arguments": {"city": city}}
        elif kind == 1:
            amount, a, b = rng.randint(5, 500), *rng.sample(currencies, 2)
            request = f"How much is {amount} {a} in {b}?"
            call = {"name": "convert_currency", "arguments": {"amount": amount, "from": a, "to": b}}
        elif kind == 2:
            minutes = rng.randint(1, 90)
            request, call = f"Set a timer for {minutes} minutes, please.", {"name": "set_timer", "arguments": {"minutes": minutes}}
        else:
            text, language = rng.choice(words), rng.choice(languages)
            request = f"Translate '{text}' into {language}."
            call = {"name": "translate", "arguments": {"text": text, "language": language}}
        rows.append({"id": f"tool-{i:03d}", "question": request, "tools": TOOLS, "answer": json.dumps(call),
                     "target": json.dumps(call)})
    return rows


def write(name: str, rows: list[dict], n_eval: int, rng: random.Random) -> None:
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i < n_eval else "train"
    rows.sort(key=lambda r: (r["split"], r["id"]))
    (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{name}: {len(rows) - n_eval} train, {n_eval} eval")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2509)
    write("elements.jsonl", elements_short(rng), 24, rng)
    write("elements_mc.jsonl", elements(rng), 40, rng)
    write("capitals.jsonl", capitals(rng), len(CAPITALS), rng)
    write("arithmetic.jsonl", arithmetic(rng), 60, rng)
    write("tool_calls.jsonl", tool_calls(rng), 50, rng)


if __name__ == "__main__":
    main()
