"""Loading rows: local file types, folders, splits, eval hold-out, mixtures, caps."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preftune.config import DataConfig
from preftune.data import hold_out, load_splits, read_file

ROWS = [{"prompt": f"Q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_and_gz(tmp_path):
    assert read_file(write_jsonl(tmp_path / "a.jsonl", ROWS)) == ROWS
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in ROWS)
    assert read_file(tmp_path / "a.jsonl.gz") == ROWS


def test_json_list_object_and_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    write_jsonl(tmp_path / "lines.json", ROWS)
    for name in ("list.json", "wrapped.json", "lines.json"):
        assert read_file(tmp_path / name) == ROWS


def test_parquet_arrow_and_csv(tmp_path):
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.ipc.new_stream(tmp_path / "a.arrow", table.schema) as writer:
        writer.write_table(table)
    assert read_file(tmp_path / "a.parquet") == ROWS
    assert read_file(tmp_path / "a.arrow") == ROWS
    (tmp_path / "a.csv").write_text("prompt,completion,label\nQ,\" a, b\",true\nR, c,false\n")
    assert read_file(tmp_path / "a.csv") == [
        {"prompt": "Q", "completion": " a, b", "label": True},
        {"prompt": "R", "completion": " c", "label": False}]


def test_saved_dataset_dict_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:6]),
                          "test": datasets.Dataset.from_list(ROWS[6:])}
                         ).save_to_disk(str(tmp_path / "saved"))
    train, eval_rows = load_splits(DataConfig(dataset_name=str(tmp_path / "saved"),
                                              dataset_test_split="test"), seed=0)
    assert (train, eval_rows) == (ROWS[:6], ROWS[6:])


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_splits(DataConfig(dataset_name=str(tmp_path / "nope.jsonl")), seed=0)
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown data file type: rows.txt"):
        read_file(tmp_path / "rows.txt")


def test_bad_json_line_is_a_bad_row_naming_the_line(tmp_path):
    """One broken line is one bad row (reported, or skipped with skip_bad_rows), not a
    failed file; a file with no readable line at all fails as a whole."""
    from preftune.data import DataError, normalize_rows

    good = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + '\n{oops\n')
    rows = read_file(tmp_path / "a.jsonl")
    assert rows[0] == good and len(rows) == 2
    with pytest.raises(DataError, match=r"a.jsonl: line 2 \(row 1\), field 'row': unreadable line \(not valid"):
        normalize_rows(rows)
    errors = []
    assert len(normalize_rows(rows, errors=errors)[1]) == 1 and len(errors) == 1
    (tmp_path / "b.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="no line is valid JSON"):
        read_file(tmp_path / "b.jsonl")


def test_single_file_is_train_only(tmp_path):
    data = DataConfig(dataset_name=str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    assert load_splits(data, seed=0) == (ROWS, [])
    data.dataset_test_split = "test"
    with pytest.raises(ValueError, match="holds one split"):
        load_splits(data, seed=0)


def test_folder_splits_by_file_name(tmp_path):
    write_jsonl(tmp_path / "hh_train.jsonl", ROWS[:7])
    write_jsonl(tmp_path / "hh_test.jsonl", ROWS[7:])
    assert load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0) == (ROWS[:7], ROWS[7:])
    named = DataConfig(dataset_name=str(tmp_path), dataset_test_split="validation")
    assert load_splits(named, seed=0) == (ROWS[:7], ROWS[7:])


def test_folder_exact_split_names_and_shards(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), tmp_path / "train_prefs-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[3:6]), tmp_path / "train_prefs-00001-of-00002.parquet")
    write_jsonl(tmp_path / "train_sft.jsonl", ROWS[6:8])
    write_jsonl(tmp_path / "test_prefs.jsonl", ROWS[8:])
    data = DataConfig(dataset_name=str(tmp_path), dataset_train_split="train_prefs",
                      dataset_test_split="test_prefs")
    assert load_splits(data, seed=0) == (ROWS[:6], ROWS[8:])
    data.dataset_train_split = "missing_split"
    with pytest.raises(ValueError, match="no split 'missing_split'"):
        load_splits(data, seed=0)


def test_folder_with_split_subfolders(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "validation").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:8]),
                   tmp_path / "data" / "train-00000-of-00001.parquet")
    write_jsonl(tmp_path / "validation" / "part0.jsonl", ROWS[8:])
    (tmp_path / "README.md").write_text("not data")
    assert load_splits(DataConfig(dataset_name=str(tmp_path)), seed=0) == (ROWS[:8], ROWS[8:])


def test_eval_fraction_is_seeded_and_disjoint(tmp_path):
    rows = [dict(row, id=i) for i, row in enumerate(ROWS * 5)]
    data = DataConfig(dataset_name=str(write_jsonl(tmp_path / "a.jsonl", rows)),
                      eval_fraction=0.2)
    train, eval_rows = load_splits(data, seed=1)
    assert (train, eval_rows) == load_splits(data, seed=1)
    assert load_splits(data, seed=2)[1] != eval_rows
    train_ids, eval_ids = {r["id"] for r in train}, {r["id"] for r in eval_rows}
    assert len(eval_ids) == 10 and not train_ids & eval_ids
    assert train_ids | eval_ids == set(range(50))
    with pytest.raises(ValueError, match="eval_fraction"):
        hold_out(rows, 1.5, seed=0)


def test_eval_dataset_and_caps(tmp_path):
    data = DataConfig(dataset_name=str(write_jsonl(tmp_path / "train.jsonl", ROWS)),
                      eval_dataset=str(write_jsonl(tmp_path / "other.jsonl", ROWS[:4])),
                      max_train_samples=5, max_eval_samples=3)
    assert load_splits(data, seed=0) == (ROWS[:5], ROWS[:3])


def test_dataset_mixer_takes_a_seeded_fraction_of_train(tmp_path):
    for name, rows in (("a", ROWS), ("b", ROWS[:4])):
        folder = tmp_path / name
        folder.mkdir()
        write_jsonl(folder / "train.jsonl", rows)
        write_jsonl(folder / "test.jsonl", rows[:1])
    data = DataConfig(dataset_mixer={str(tmp_path / "a"): 0.5, str(tmp_path / "b"): 1.0},
                      dataset_splits=["train", "test"])
    train, eval_rows = load_splits(data, seed=3)
    assert len(train) == 5 + 4 and train[5:] == ROWS[:4]
    assert all(row in ROWS for row in train[:5])
    assert train == load_splits(data, seed=3)[0]
    assert eval_rows == [ROWS[0], ROWS[0]]  # test splits are taken whole


def test_hh_rlhf_gz_file(hh_file):
    rows = read_file(hh_file)
    assert len(rows) == 2312 and set(rows[0]) == {"chosen", "rejected"}
    assert rows[0]["chosen"].startswith("\n\nHuman: ")


def test_hub_names_go_to_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS[:2] if split == "train" else ROWS[2:3])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, config: ["train", "test"])
    monkeypatch.setattr("preftune.data.hub.hub_unreachable", lambda: None)
    data = DataConfig(dataset_name="org/prefs", dataset_config="default",
                      dataset_test_split="test")
    assert load_splits(data, seed=0) == (ROWS[:2], ROWS[2:3])
    assert calls == [("org/prefs", "default", "train"), ("org/prefs", "default", "test")]
