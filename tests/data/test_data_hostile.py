"""Regressions for what fuzzing the data path found, each as a hand-made example."""

import json

import pytest

from preftune.data import DataError, read_file, tokenize_rows
from preftune.errors import ConfigError

ROW = {"prompt": "Q", "chosen": " yes", "rejected": " no"}


def run(rows, tokenizer, **kwargs):
    return tokenize_rows(rows, tokenizer, max_length=kwargs.pop("max_length", 64),
                         max_prompt_length=32, **kwargs)


def test_rows_that_are_not_objects_are_bad_rows_not_crashes(smollm2):
    with pytest.raises(DataError, match="row 1, field 'row': wrong type"):
        run([ROW, None, 5], smollm2)
    pairs, report = run([None, ROW, [1, 2]], smollm2, skip_bad_rows=True)
    assert [p.example_id for p in pairs] == [1] and report.skipped == {"wrong type": 2}


def test_file_with_bom_crlf_and_a_broken_line(tmp_path, smollm2):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\r\n{broken\r\n"
                     + b'{"prompt": "\xff"}\r\n' + json.dumps(ROW).encode() + b"\r\n")
    rows = read_file(path)
    assert rows[0] == ROW and rows[3] == ROW and len(rows) == 4
    pairs, report = run(rows, smollm2, skip_bad_rows=True)
    assert [p.example_id for p in pairs] == [0, 3]
    assert report.skipped == {"unreadable line": 2}
    assert "d.jsonl: line 3 (row 2), field 'row': unreadable line (not UTF-8" in report.summary()


def test_lone_surrogates_from_json_escapes_are_reported(tmp_path, smollm2):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "a\\ud800", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 1 \(row 0\), field 'chosen': invalid unicode"):
        run(read_file(path), smollm2)


def test_texts_that_tokenize_the_same_are_identical(smollm2):
    """An EOS spelled out in the text, or bytes the vocabulary lacks, make different
    strings the same tokens: a pair with nothing to prefer."""
    with pytest.raises(DataError, match="row 0, field 'rejected': identical to chosen "
                                        r"\(the same tokens"):
        run([{"prompt": "Q", "chosen": " yes<|im_end|>", "rejected": " yes"}], smollm2)
    with pytest.raises(DataError, match="identical to chosen"):
        run([{"prompt": "Q", "chosen": " a\x04", "rejected": " a\x06"}], smollm2)


def test_completions_identical_within_max_length_are_dropped_and_counted(smollm2):
    shared = " the same long answer" * 10
    rows = [{"prompt": "Q", "chosen": shared + " yes", "rejected": shared + " no"}, ROW]
    pairs, report = run(rows, smollm2, max_length=16)
    assert [p.example_id for p in pairs] == [1]
    assert report.dropped_identical == 1
    assert "dropped 1 pairs whose completions are identical" in report.summary()


def test_column_mapping_values_must_be_names():
    from preftune.data import detect_format

    with pytest.raises(ConfigError, match="column_mapping values must be column names"):
        detect_format([ROW], column_mapping={"prompt": 5})


def test_unreadable_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[1, 2")
    with pytest.raises(DataError, match="d.json: not a readable JSON array"):
        read_file(path)
