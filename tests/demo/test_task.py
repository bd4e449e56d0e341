"""The demo task's checker, generator and train/eval split (no model needed)."""

import random

import pytest

from preftune.demo import task
from preftune.demo.task import check, eval_records, final_number, make_pairs, split_items

TIMES = {"kind": "times", "a": 7, "b": 8, "answer": 56, "question": "What is 7 times 8?"}
CONVERT = {"kind": "convert", "small": "meters", "big": "kilometers", "factor": 1000, "n": 3,
           "answer": 3000, "question": "How many meters are in 3 kilometers?"}


@pytest.mark.parametrize("reply", [
    "7 times 8 is 56.",
    "56",
    "The answer is 56.",
    "7 * 8 = 56\n\n",
    "To find 7 times 8, we multiply: 7 * 8 = 56. So, 7 times 8 is 56.",
    "The answer is 56. (7 rows of 8)",  # "answer is" wins over the last number
    "56.0",
])
def test_correct_replies_are_accepted(reply):
    assert check(TIMES, reply)


@pytest.mark.parametrize("reply", [
    "7 times 8 is 54.",
    "56 is close, but 7 times 8 is 54.",  # the last number is the one committed to
    "The answer is 54, not 56",
    "7 times 8 is fifty-six.",  # the checker reads digits only
    "",
    "I don't know.",
    "560",
])
def test_wrong_replies_are_rejected(reply):
    assert not check(TIMES, reply)


def test_thousands_separators_and_units():
    assert check(CONVERT, "3 kilometers = 3 x 1000 = 3000 meters.")
    assert check(CONVERT, "There are 3,000 meters.")
    assert not check(CONVERT, "3 kilometers = 3 x 100 = 300 meters.")


def test_final_number():
    assert final_number("no digits here") is None
    assert final_number("-4 and 12.5") == 12.5
    assert final_number("1,234,567 grams") == 1234567


def test_generator_is_deterministic():
    assert make_pairs(50, seed=3) == make_pairs(50, seed=3)
    assert make_pairs(50, seed=3) != make_pairs(50, seed=4)
    assert eval_records(seed=0) == eval_records(seed=0)


def test_rows_are_conversational():
    for row in make_pairs(100, seed=0):
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == ["assistant"]
        assert [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


def test_checker_agrees_with_the_labels():
    """Over every fact and many draws: chosen passes the checker, rejected fails it."""
    rng = random.Random(0)
    for item in task.all_items()["times"] + task.all_items()["convert"]:
        for _ in range(5):
            for record in task.question_records(item, rng):
                row = task.pair_for(record, item, rng)
                assert check(record, row["chosen"][0]["content"])
                assert not check(record, row["rejected"][0]["content"])


def test_train_and_eval_share_no_fact():
    train, held_out = split_items()

    def facts(items_by_kind):
        keys = set()
        for item in items_by_kind["times"]:
            keys |= {("times", a, b) for a, b in item["orders"]}
        for item in items_by_kind["convert"]:
            keys.add(("convert", item["big"], item["small"], item["n"]))
        return keys

    assert facts(train) and facts(held_out)
    assert not facts(train) & facts(held_out)
    eval_questions = {r["question"] for r in eval_records()}
    train_questions = {row["prompt"][0]["content"] for row in make_pairs(600)}
    assert not eval_questions & train_questions
    # No commuted form leaks either: 7 x 8 in eval means 8 x 7 is not in train.
    times_eval = {(r["a"], r["b"]) for r in eval_records() if r["kind"] == "times"}
    assert {(b, a) for a, b in times_eval} == times_eval


def test_shipped_files_match_the_generator(tmp_path):
    """train.jsonl and eval.jsonl in the package are what write_dataset() writes."""
    from pathlib import Path
    written = task.write_dataset(tmp_path)
    shipped = Path(task.__file__).parent
    for path in written:
        assert path.read_text() == (shipped / path.name).read_text(), path.name
