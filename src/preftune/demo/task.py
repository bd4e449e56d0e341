"""The demo task: times-table and metric-conversion questions a program can check.

Why this task: SmolLM2-135M-Instruct knows most of the times table up to 10 (made to start
its reply with "7 times 8 is", it completes the product correctly about 9 times in 10)
but, asked plainly, it rambles ("To find 7 times 8, we can use the formula ... 7 * 8 = 54")
and lands on a wrong number most of the time. On metric conversions it makes one
systematic slip: "47 kilograms = 47 x 1000 = 4700 grams", a zero short. A preference set
that prefers a short, fixed-format, correct answer over a rambling one or over that slip
fixes both in a few dozen steps, which is what `preftune demo` has to show on a CPU.

Held-out means unseen facts: items (a times-table pair in either order; a unit with a
count) are split before any phrasing or wrong answer is drawn, so no evaluation fact, nor
its commuted form, appears in the training pairs.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional

FACTORS = range(2, 11)  # times table 2..10; the model's recall of 11 and 12 is poor
# (unit asked for, unit given, factor): powers of ten, so the rule ("append the zeros")
# holds for any count and held-out counts test it, not memory.
UNITS = [
    ("centimeters", "meters", 100), ("millimeters", "meters", 1000),
    ("meters", "kilometers", 1000), ("grams", "kilograms", 1000),
    ("milliliters", "liters", 1000), ("millimeters", "centimeters", 10),
    ("cents", "dollars", 100),
]
COUNTS = range(2, 100)
TIMES_EVAL_SHARE = 0.4  # of the 45 times-table pairs
CONVERT_EVAL_ITEMS = 64  # of the 686 unit-count items

TIMES_QUESTIONS = ["What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}.",
                   "What is {a} * {b}?", "Compute {a} times {b}."]
CONVERT_QUESTIONS = ["How many {small} are in {n} {big}?", "Convert {n} {big} to {small}.",
                     "{n} {big} is how many {small}?"]

# The answer formats the model is taught; the checker does not depend on them.
TIMES_ANSWER = "{a} times {b} is {value}."
CONVERT_ANSWER = "{n} {big} = {n} x {factor} = {value} {small}."
# Wrong answers in the base model's own rambling style, so that SimPO pushes down that style
# (high average log-prob under the base model) and not just a wrong digit.
TIMES_RAMBLE = [
    "To find {a} times {b}, we can use the formula for multiplication: {a} * {b} = {value}. "
    "So, {a} times {b} is {value}.",
    "{a} x {b} = {value}\n\nThis is a classic example of multiplication, where we add {a} "
    "to itself {b} times.",
    "To solve this problem, we need to multiply {a} by {b}. This gives us {value}.",
]
CONVERT_RAMBLE = [
    "To find out how many {small} are in {n} {big}, we need to convert {n} {big} into "
    "{small}. {n} {big} is equal to {value} {small}.",
    "To convert {n} {big} to {small}, you need to multiply {n} by {factor}.\n\n{n} {big} is "
    "equal to {n} * {factor} = {value} {small}.",
    "There are {value} {small} in {n} {big}. This is because one of the {big} has {factor} "
    "{small}.",
]


def all_items() -> dict[str, list[dict]]:
    """Every fact the task can ask about, by kind; a times item holds both orders."""
    times = [{"kind": "times", "orders": [(a, b)] if a == b else [(a, b), (b, a)],
              "value": a * b}
             for a in FACTORS for b in FACTORS if a <= b]
    convert = [{"kind": "convert", "small": small, "big": big, "factor": factor, "n": n,
                "value": n * factor}
               for small, big, factor in UNITS for n in COUNTS]
    return {"times": times, "convert": convert}


def split_items(seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Disjoint (train, eval) items by kind; the split is per fact, before phrasing."""
    rng = random.Random(seed)
    train, held_out = {}, {}
    for kind, items in all_items().items():
        items = list(items)
        rng.shuffle(items)
        cut = round(len(items) * TIMES_EVAL_SHARE) if kind == "times" else CONVERT_EVAL_ITEMS
        held_out[kind], train[kind] = items[:cut], items[cut:]
    return train, held_out


def _wrong_answers(item: dict) -> list[tuple[int, int]]:
    """Plausible mistakes as (wrong value, factor shown in the working): a neighbouring row
    of the table or the sum instead of the product; for conversions the zero-short slip
    the base model makes, a zero too many, the neighbouring power of ten, or the count
    copied through unchanged."""
    value = item["value"]
    if item["kind"] == "times":
        a, b = item["orders"][0]
        wrong = [(w, 0) for w in (a * (b + 1), a * (b - 1), (a + 1) * b, (a - 1) * b, a + b,
                                  value + 2, value - 2, value + 10)]
    else:
        n, factor = item["n"], item["factor"]
        wrong = [(value // 10, factor), (value // 10, factor), (value * 10, factor),
                 (n * factor // 10, factor // 10), (n * factor * 10, factor * 10), (n, 1)]
    # The zero-short slip is listed twice: it is the one the model makes most.
    return [(w, f) for w, f in wrong if w != value and w > 0]


def question_records(item: dict, rng: random.Random) -> list[dict]:
    """The question records for one fact: one per order (times) or one (convert), each with
    a randomly drawn phrasing."""
    if item["kind"] == "times":
        return [{"kind": "times", "a": a, "b": b, "answer": item["value"],
                 "question": rng.choice(TIMES_QUESTIONS).format(a=a, b=b)}
                for a, b in item["orders"]]
    fields = {k: item[k] for k in ("small", "big", "factor", "n")}
    return [{"kind": "convert", **fields, "answer": item["value"],
             "question": rng.choice(CONVERT_QUESTIONS).format(**fields)}]


def _answer(record: dict, value: int, template: str) -> str:
    return template.format(value=value, **{k: v for k, v in record.items()
                                           if k not in ("question", "answer")})


def pair_for(record: dict, item: dict, rng: random.Random, ramble_share: float = 0.5) -> dict:
    """One preference row: the correct short answer against a wrong one, rambling or short."""
    times = record["kind"] == "times"
    wrong, shown_factor = rng.choice(_wrong_answers(item))
    chosen = _answer(record, record["answer"], TIMES_ANSWER if times else CONVERT_ANSWER)
    if rng.random() < ramble_share:
        rejected = _answer(record, wrong, rng.choice(TIMES_RAMBLE if times else CONVERT_RAMBLE))
    elif times:
        rejected = _answer(record, wrong, TIMES_ANSWER)
    else:
        rejected = _answer({**record, "factor": shown_factor}, wrong, CONVERT_ANSWER)
    return {"prompt": [{"role": "user", "content": record["question"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def make_pairs(n: int, seed: int = 0, split_seed: int = 0,
               ramble_share: float = 0.5) -> list[dict]:
    """``n`` conversational preference rows from the training facts only, half of each
    kind (there are far more conversion items than times-table pairs)."""
    train, _ = split_items(split_seed)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = ("times", "convert")[i % 2]
        item = rng.choice(train[kind])
        record = rng.choice(question_records(item, rng))
        rows.append(pair_for(record, item, rng, ramble_share))
    return rows


def eval_records(seed: int = 0, split_seed: int = 0) -> list[dict]:
    """The held-out question records (both orders of every held-out times-table pair)."""
    _, held_out = split_items(split_seed)
    rng = random.Random(seed)
    return [record for kind in ("times", "convert") for item in held_out[kind]
            for record in question_records(item, rng)]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\D{0,3}(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> Optional[float]:
    """The number a reply commits to: after the last "answer is" if it says so, else the
    last number it writes (the usual GSM8K-style rule)."""
    found = _ANSWER_IS.findall(text) or _NUMBER.findall(text)
    if not found:
        return None
    digits = found[-1].replace(",", "")
    try:
        return float(digits)
    except ValueError:  # "1,2," and the like
        return None


def check(record: dict, generated_text: str) -> bool:
    value = final_number(generated_text)
    return value is not None and value == float(record["answer"])


def write_dataset(directory, n_train: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` (preference rows) and ``eval.jsonl`` (question records)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "train.jsonl", directory / "eval.jsonl"
    for path, rows in zip(paths, (make_pairs(n_train, seed), eval_records(seed))):
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return paths
