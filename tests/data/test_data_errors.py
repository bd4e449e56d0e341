"""Every bad input a user can bring ends as a message naming the file, the row as the file
counts it and the field, with exit code 2, or as a counted skip with ``--skip_bad_rows``:
never a traceback. Each case is one a user met (empty, corrupt and truncated files, wrong
compression, wrong encoding, hostile JSON, templates that raise, nothing left to train on,
a hub name offline, broken model folders)."""

import gzip
import json
import time

import pytest

from preftune.cli import main
from preftune.data import DataError, read_file, tokenize_rows

ROW = {"prompt": "Q", "chosen": " yes", "rejected": " no"}
GOOD = json.dumps(ROW)


def cli(tmp_path, data, *extra, skip=False):
    """``preftune train`` on ``data`` until its data is tokenized: (exit code, stderr)."""
    argv = ["train", "--method", "simpo", "--dataset_name", str(data), "--output_dir",
            str(tmp_path / "out"), "--max_steps", "1", "--skip_bad_rows", str(skip).lower(),
            *extra]
    return main(argv)


def run_cli(capsys, tmp_path, data, *extra, skip=False):
    code = cli(tmp_path, data, *extra, skip=skip)
    return code, capsys.readouterr().err


def jsonl(path, lines):
    path.write_bytes(b"".join(line.encode() if isinstance(line, str) else line
                              for line in lines))
    return path


def gz_bytes(text: bytes) -> bytes:
    return gzip.compress(text, mtime=0)


# -- whole files that cannot be read: an error naming the file, with or without skipping --

def _parquet_bytes(names=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist([ROW] * 3)
    pq.write_table(table.rename_columns(names) if names else table, sink)
    return sink.getvalue().to_pybytes()


def _arrow_bytes(names=None):
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist([ROW] * 3)
    table = table.rename_columns(names) if names else table
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


GOOD_GZ = gz_bytes((GOOD + "\n").encode() * 4)
WHOLE_FILE_CASES = {
    "empty.csv": (b"", "empty file"),
    "blank.jsonl": (b"\n\n  \n", "empty file"),
    "header_only.csv": (b"prompt,chosen,rejected\n", "no rows"),
    "empty.parquet": (b"", "empty file"),
    "corrupt.parquet": (lambda: _parquet_bytes()[:-30], "not a readable parquet file"),
    "garbage.parquet": (b"PAR1 this is not parquet at all", "not a readable parquet file"),
    "empty.arrow": (b"", "empty file"),
    "corrupt.arrow": (lambda: _arrow_bytes()[:40], "not a readable Arrow file"),
    "truncated.jsonl.gz": (GOOD_GZ[:-12], "ends early"),
    "bad_crc.jsonl.gz": (GOOD_GZ[:-8] + b"\0\0\0\0" + GOOD_GZ[-4:], "CRC check failed"),
    "plain.jsonl.gz": ((GOOD + "\n").encode(), "remove .gz from its name"),
    "deep.json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "broken.json": (b'[{"prompt": "Q"', "not a readable JSON array"),
    "all_broken.jsonl": (b"{oops\n{nope\n", "no line is valid JSON"),
    "dup_column.csv": (b"prompt,chosen,chosen\nQ,a,b\n", "duplicate column"),
    "dup_column.parquet": (lambda: _parquet_bytes(["prompt", "chosen", "chosen"]),
                           "not a readable parquet file (Multiple matches"),
    "dup_column.arrow": (lambda: _arrow_bytes(["prompt", "chosen", "chosen"]),
                         "duplicate column (two columns are named 'chosen')"),
}


@pytest.mark.parametrize("name", sorted(WHOLE_FILE_CASES))
@pytest.mark.parametrize("skip", [False, True])
def test_unreadable_files_exit_2_naming_the_file(tmp_path, capsys, name, skip):
    content, expected = WHOLE_FILE_CASES[name]
    path = tmp_path / name
    path.write_bytes(content() if callable(content) else content)
    code, err = run_cli(capsys, tmp_path, path, skip=skip)
    assert code == 2, err
    assert "Traceback" not in err and str(path) in err and expected in err, err
    assert "--skip_bad_rows" not in err  # skipping rows cannot help a whole file


# -- bad rows: named by file, line (row) and field; skipped and counted with skipping --

def _deep_line():
    return '{"prompt": "Q", "chosen": ' + "[" * 100_000 + "]" * 100_000 + ', "rejected": "n"}\n'


ROW_CASES = {
    "deep nesting": (_deep_line, "line 2 (row 1), field 'row': unreadable line "
                                 "(not valid JSON: nested too deeply"),
    "5,000-digit integer": (lambda: '{"prompt": "Q", "chosen": ' + "7" * 5000
                            + ', "rejected": "n"}\n',
                            "line 2 (row 1), field 'row': unreadable line (not valid JSON: "
                            "an integer of more than 4,300 digits)"),
    "duplicate key": (lambda: '{"prompt": "Q", "chosen": " a", "chosen": " b", '
                              '"rejected": " n"}\n',
                      "line 2 (row 1), field 'chosen': duplicate key"),
    "trailing user turn": (lambda: json.dumps({
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "And you?"}],
        "rejected": [{"role": "assistant", "content": "Go away"}]}) + "\n",
        "line 2 (row 1), field 'chosen': ends with a user turn"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_bad_rows_exit_2_naming_file_line_and_field(tmp_path, capsys, case):
    make, expected = ROW_CASES[case]
    path = jsonl(tmp_path / "d.jsonl", [GOOD + "\n", make(), GOOD + "\n", GOOD + "\n"])
    code, err = run_cli(capsys, tmp_path, path)
    assert code == 2 and "Traceback" not in err, err
    assert f"{path}: {expected}" in err, err
    rows = read_file(path)
    pairs, report = tokenize_rows(rows, _tokenizer(), max_length=64, max_prompt_length=32,
                                  skip_bad_rows=True)
    assert len(pairs) == 3 and sum(report.skipped.values()) == 1, report.summary()
    assert f"{path}: {expected}" in report.summary()


def _tokenizer():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")


def test_one_non_utf8_byte_in_a_csv_is_that_row_only(tmp_path, capsys):
    """pyarrow read such a column as binary: every row was 'wrong type', from row 0."""
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,chosen,rejected\nQ1,yes,no\nQ2,caf\xe9,no\nQ3,yes,no\n")
    code, err = run_cli(capsys, tmp_path, path)
    assert code == 2, err
    assert f"{path}: line 3 (row 1), field 'chosen': not UTF-8 (byte 0xe9" in err, err
    rows = read_file(path)
    pairs, report = tokenize_rows(rows, _tokenizer(), max_length=64, max_prompt_length=32,
                                  skip_bad_rows=True)
    assert [p.example_id for p in pairs] == [0, 2] and report.skipped == {"not UTF-8": 1}


def test_csv_record_with_wrong_field_count_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,chosen,rejected\n"multi\nline",yes,no\nQ2,yes\n')
    rows = read_file(path)
    assert rows[0]["prompt"] == "multi\nline" and rows[0].origin.line == 2
    with pytest.raises(DataError, match=r"d.csv: line 4 \(row 1\), field 'row': wrong number "
                                        r"of fields \(2 fields, the header has 3\)"):
        tokenize_rows(rows, _tokenizer(), max_length=64, max_prompt_length=32)


def test_csv_column_with_an_empty_name_is_named_as_such(tmp_path):
    """Found by the format fuzzer: a bad byte under a header cell that is empty."""
    path = tmp_path / "d.csv"
    path.write_bytes(b',prompt,chosen,rejected\n\xe9,Q,yes,no\n')
    with pytest.raises(DataError, match=r"line 2 \(row 0\), field '': not UTF-8"):
        tokenize_rows(read_file(path), _tokenizer(), max_length=64, max_prompt_length=32)


def test_csv_types_label_columns_as_pyarrow_did(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,label,n\nQ,a,true,1\nR,b,FALSE,\n")
    assert read_file(path) == [{"prompt": "Q", "completion": "a", "label": True, "n": 1},
                               {"prompt": "R", "completion": "b", "label": False, "n": None}]


def test_chat_template_raising_type_error_is_a_row_error(tmp_path, capsys):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}")
    row = {"prompt": [{"role": "user", "content": "Hi"}],
           "chosen": [{"role": "assistant", "content": "Hello"}],
           "rejected": [{"role": "assistant", "content": "Go"}]}
    path = jsonl(tmp_path / "c.jsonl", [json.dumps(row) + "\n"] * 2)
    code, err = run_cli(capsys, tmp_path, path, "--chat_template", str(template))
    assert code == 2 and "Traceback" not in err, err
    assert f"{path}: line 1 (row 0), field 'prompt': chat template error (TypeError" in err


def test_every_row_skipped_says_how_many_and_why(tmp_path, capsys):
    path = jsonl(tmp_path / "d.jsonl", ['{"prompt": "Q", "chosen": "a", "rejected": "a"}\n',
                                        "{oops\n", '{"prompt": "Q", "chosen": 5}\n'])
    code, err = run_cli(capsys, tmp_path, path, skip=True)
    assert code == 2 and "Traceback" not in err, err
    assert f"no training pairs left in {path} (3 rows read, 3 skipped as bad rows (" in err
    for reason in ("identical to chosen x1", "unreadable line x1", "missing field x1"):
        assert reason in err


def test_hub_name_while_offline_is_quick_and_names_the_fix(tmp_path, capsys, monkeypatch):
    """It took 32 s of retries and ended in a traceback."""
    from preftune.config import DataConfig
    from preftune.data import load_splits
    from preftune.errors import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(capsys, tmp_path, "someone/no-such-prefs")
    assert code == 2 and "Traceback" not in err, err
    assert "HF_HUB_OFFLINE is set" in err and "huggingface-cli download" in err
    start = time.monotonic()
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        load_splits(DataConfig(dataset_name="someone/no-such-prefs"), seed=0)
    assert time.monotonic() - start < 10


def test_hub_unreachable_fails_fast(monkeypatch):
    from preftune.data import hub
    from preftune.errors import ConfigError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="hub.invalid cannot be reached.*HF_HUB_OFFLINE=1"):
        hub.splits_of("someone/no-such-prefs", None)
    assert time.monotonic() - start < hub.PROBE_SECONDS + 2


# -- model folders -----------------------------------------------------------------------

def _model_folder(tmp_path, weights: bytes):
    from preftune.model_io import bundled_smollm2

    source = bundled_smollm2()
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    (folder / "model.safetensors").write_bytes(weights)
    return folder


LFS = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64
       + b"\nsize 269060552\n")


@pytest.mark.parametrize("weights, expected", [
    (LFS, "is a Git-LFS pointer, not the weights: run `git lfs pull`"),
    (b"\xff" * 64, "is not a safetensors file"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......", "is not a safetensors file"),
])
def test_model_weights_that_are_not_safetensors(tmp_path, capsys, weights, expected):
    folder = _model_folder(tmp_path, weights)
    data = jsonl(tmp_path / "d.jsonl", [GOOD + "\n"] * 4)
    code, err = run_cli(capsys, tmp_path, data, "--model_name_or_path", str(folder))
    assert code == 2 and "Traceback" not in err and "MemoryError" not in err, err
    assert str(folder / "model.safetensors") in err and expected in err, err


def test_model_needing_trust_remote_code_names_the_key_and_the_risk(tmp_path, capsys):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "preftune-custom", "vocab_size": 10,
        "auto_map": {"AutoConfig": "conf.C", "AutoModelForCausalLM": "model.M",
                     "AutoTokenizer": ["tok.T", None]}}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tok.T", None]}, "tokenizer_class": "T"}))
    data = jsonl(tmp_path / "d.jsonl", [GOOD + "\n"] * 4)
    code, err = run_cli(capsys, tmp_path, data, "--model_name_or_path", str(folder))
    # The last line: transformers' logging handler may hold a stream of an earlier test.
    last = err.rstrip().splitlines()[-1]
    assert code == 2 and last.startswith(f"preftune: config error: tokenizer {folder}:"), err
    assert "trust_remote_code: true" in last and "runs on this machine" in last


# -- ~ in paths --------------------------------------------------------------------------

def test_home_is_expanded_in_yaml_and_on_the_command_line(tmp_path, monkeypatch):
    from preftune.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: ~/models/m\ndataset_name: ~/data/d.jsonl\n"
                      "output_dir: ~/runs/x\ndataset_mixer: {\"~/a\": 0.5}\n")
    config = load_config(str(recipe), ["--eval_dataset", "~/data/e.jsonl"])
    assert config.model.model_name_or_path == str(tmp_path / "models/m")
    assert config.data.dataset_name == str(tmp_path / "data/d.jsonl")
    assert config.data.eval_dataset == str(tmp_path / "data/e.jsonl")
    assert config.training.output_dir == str(tmp_path / "runs/x")
    assert config.data.dataset_mixer == {str(tmp_path / "a"): 0.5}


def test_loading_weights_that_are_an_lfs_pointer_names_the_fix(tmp_path):
    """Past pre-flight (a model handed to load_model directly): the same ConfigError."""
    from preftune.errors import ConfigError
    from preftune.model_io import load_model

    folder = _model_folder(tmp_path, LFS)
    with pytest.raises(ConfigError, match="model .*model: its weights are not a readable "
                                          "safetensors file.*git lfs pull"):
        load_model(str(folder))
