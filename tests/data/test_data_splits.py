"""Splits as users lay them out: which files train, which evaluate, what is printed, what is
ambiguous; and row numbers that stay the file's through folders, eval files and
eval_fraction."""

import json

import pytest

from preftune.config import DataConfig, load_config
from preftune.data import DataError, load_splits, tokenize_rows
from preftune.data.splits import choose, split_kind
from preftune.errors import ConfigError


def rows(tag, n):
    return [{"prompt": f"{tag} Q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"}
            for i in range(n)]


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    return path


def tags(data):
    return sorted({row["prompt"].split()[0] for row in data})


@pytest.mark.parametrize("name", ["val", "heldout", "held-out", "dev", "eval", "validation",
                                  "test", "valid"])
def test_evaluation_files_in_a_folder_are_never_trained_on(tmp_path, name):
    write(tmp_path / "train.jsonl", rows("train", 4))
    write(tmp_path / f"{name}.jsonl", rows("eval", 2))
    train, evaluation = load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0)
    assert tags(train) == ["train"] and tags(evaluation) == ["eval"]


def test_unnamed_file_trains_beside_an_eval_file(tmp_path):
    write(tmp_path / "prefs.jsonl", rows("train", 4))
    write(tmp_path / "heldout.jsonl", rows("eval", 2))
    train, evaluation = load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0)
    assert tags(train) == ["train"] and tags(evaluation) == ["eval"]


ULTRAFEEDBACK = ["train_prefs", "train_sft", "train_gen", "test_prefs", "test_sft", "test_gen"]


def test_ultrafeedback_folder_trains_on_train_prefs_and_says_so(tmp_path):
    for name in ULTRAFEEDBACK:
        write(tmp_path / "data" / f"{name}-00000-of-00001.jsonl", rows(name, 3))
    lines = []
    train, evaluation = load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0,
                                    log=lines.append)
    assert tags(train) == ["train_prefs"] and tags(evaluation) == ["test_prefs"]
    assert lines == [f"data: data folder {tmp_path}: train split train_prefs; eval split "
                     "test_prefs; not used: test_gen, test_sft, train_gen, train_sft"]


def test_splits_are_printed_before_training(tmp_path, tokenizer_smollm2):
    from preftune import setup
    from preftune.validation import validate

    for name in ("train_prefs", "train_sft", "test_prefs"):
        write(tmp_path / f"{name}.jsonl", rows(name, 3))
    config = load_config(None, ["--method", "simpo", "--dataset_name", str(tmp_path)])
    lines = []
    setup.build_pairs(config, tokenizer_smollm2, validate(config, loads_model=False),
                      log=lines.append)
    assert lines[0].startswith(f"data: data folder {tmp_path}: train split train_prefs; "
                               "eval split test_prefs; not used: train_sft")
    assert any(line.startswith("train data: data: 3 rows") for line in lines[1:])


@pytest.fixture(scope="module")
def tokenizer_smollm2():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")


def test_validation_is_preferred_to_test_for_evaluation(tmp_path):
    for name in ("train", "validation", "test"):
        write(tmp_path / f"{name}.jsonl", rows(name, 2))
    train, evaluation = load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0)
    assert tags(train) == ["train"] and tags(evaluation) == ["validation"]
    named = DataConfig(dataset_name=str(tmp_path), dataset_test_split="test")
    assert tags(load_splits(named, seed=0)[1]) == ["test"]


@pytest.mark.parametrize("files, message", [
    (["train_a", "train_b"], r"several training splits: train_a \(train_a.jsonl\), train_b "
                             r"\(train_b.jsonl\); set dataset_train_split"),
    (["train", "val", "dev"], r"several evaluation splits: dev \(dev.jsonl\), val "
                              r"\(val.jsonl\); set dataset_test_split"),
    (["hh_train", "extra"], r"not clear which files are training data: hh_train "
                            r"\(hh_train.jsonl\) say train, extra.jsonl say no split"),
])
def test_ambiguous_folders_are_errors_listing_the_files(tmp_path, files, message):
    for name in files:
        write(tmp_path / f"{name}.jsonl", rows(name, 2))
    with pytest.raises(ConfigError, match=message):
        load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0)


def test_saved_dataset_dict_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows(name, 2))
                          for name in ULTRAFEEDBACK}).save_to_disk(str(tmp_path / "uf"))
    train, evaluation = load_splits(DataConfig(dataset_name=str(tmp_path / "uf")), seed=0)
    assert tags(train) == ["train_prefs"] and tags(evaluation) == ["test_prefs"]


def test_hub_dataset_dict_splits(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr("preftune.data.hub.hub_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "get_dataset_split_names",
                        lambda name, config: ["train", "validation", "heldout"])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split:
                        datasets.Dataset.from_list(rows(split, 2)))
    with pytest.raises(ConfigError, match="several evaluation splits: validation, heldout"):
        load_splits(DataConfig(dataset_name="org/prefs"), seed=0)
    named = DataConfig(dataset_name="org/prefs", dataset_test_split="heldout")
    train, evaluation = load_splits(named, seed=0)
    assert tags(train) == ["train"] and tags(evaluation) == ["heldout"]


def test_split_words():
    assert [split_kind(n) for n in ("train_prefs", "test_gen", "heldout", "held_out", "dev",
                                    "prefs", "valid")] == \
        ["train", "eval", "eval", "eval", "eval", None, "eval"]
    assert choose(ULTRAFEEDBACK, "eval", "x", partner="train_sft") == ["test_sft"]


# -- row numbers as the file counts them --------------------------------------------------

BAD = {"prompt": "Q", "chosen": 7, "rejected": " no"}


def test_eval_fraction_keeps_file_row_numbers(tmp_path):
    """File row 86 was reported as 84 or 71 once eval_fraction had taken rows out."""
    data = rows("r", 100)
    data[86] = BAD
    path = write(tmp_path / "d.jsonl", data)
    for seed in range(4):
        train, evaluation = load_splits(DataConfig(dataset_name=str(path), eval_fraction=0.2),
                                        seed=seed)
        part = train if any(r.get("chosen") == 7 for r in train) else evaluation
        with pytest.raises(DataError) as caught:
            tokenize_rows(part, _tok(), max_length=64, max_prompt_length=32)
        assert f"{path}: line 87 (row 86), field 'chosen': wrong type" in str(caught.value) \
            or f"{path} (held out for eval by eval_fraction): line 87 (row 86), field " \
               "'chosen'" in str(caught.value)


def test_folder_errors_name_the_file_and_its_own_row(tmp_path):
    write(tmp_path / "part1.jsonl", rows("a", 5))
    second = rows("b", 5)
    second[3] = BAD
    path = write(tmp_path / "part2.jsonl", second)
    train, _ = load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0)
    with pytest.raises(DataError, match=f"{path}: line 4 \\(row 3\\), field 'chosen'"):
        tokenize_rows(train, _tok(), max_length=64, max_prompt_length=32)


def test_errors_in_the_eval_file_say_it_is_the_eval_file(tmp_path):
    evaluation_rows = rows("e", 3)
    evaluation_rows[2] = BAD
    eval_path = write(tmp_path / "heldout.jsonl", evaluation_rows)
    data = DataConfig(dataset_name=str(write(tmp_path / "t.jsonl", rows("t", 3))),
                      eval_dataset=str(eval_path))
    _, evaluation = load_splits(data, seed=0)
    with pytest.raises(DataError, match=f"eval file {eval_path}: line 3 \\(row 2\\)"):
        tokenize_rows(evaluation, _tok(), max_length=64, max_prompt_length=32)


def test_cli_names_the_eval_file(tmp_path, capsys):
    from preftune.cli import main

    bad = rows("v", 2)
    bad[1] = BAD
    write(tmp_path / "data" / "train.jsonl", rows("t", 4))
    path = write(tmp_path / "data" / "val.jsonl", bad)
    code = main(["train", "--method", "simpo", "--dataset_name", str(tmp_path / "data"),
                 "--output_dir", str(tmp_path / "out"), "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"eval file {path}: line 2 (row 1), field 'chosen'" in err, err


def _tok():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")
