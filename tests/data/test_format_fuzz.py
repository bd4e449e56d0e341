"""Fuzzing across file formats, through the loading path ``preftune train`` uses
(``setup.build_pairs``: sources -> format checks -> tokenization).

Two campaigns. The first writes hostile rows (fuzz_rows.py) as every file type preftune
reads: JSON lines, a JSON array, CSV, parquet, Arrow (stream and file format), each also
gzip-compressed, and folders of such files under split names, with hostile lines mixed in
(broken JSON, bytes that are not UTF-8, nesting 100,000 deep, 5,000-digit integers,
duplicate keys). The second takes valid files and corrupts their bytes: cut short, bits
flipped, a range zeroed, the wrong extension, a .gz name on a plain file or none on a
compressed one. Every input must end one of two ways: pairs, or a ``DataError`` (exit
code 2) whose message names the file, and the row and field where it is about a row; a
``ConfigError`` only for what is about the whole dataset (no recognisable format, rows of
the wrong kind for the objective, ambiguous splits), naming the file or folder. Nothing
else may escape.

``PREFTUNE_FUZZ_EXAMPLES`` (default 60) sets the examples per test: 4 tests, 240 inputs.
The longer campaign: ``PREFTUNE_FUZZ_EXAMPLES=2500`` (10,000 inputs), with
``PREFTUNE_FUZZ_REPORT=path.json`` to write the outcome counts.
"""

from __future__ import annotations

import atexit
import csv
import gzip
import io
import json
import os
import random
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz_rows import FUZZ, datasets
from preftune.config import load_config
from preftune.data import DataError
from preftune.errors import ConfigError

KINDS = ("jsonl", "json", "json_lines", "csv", "parquet", "arrow_stream", "arrow_file")
SPLIT_NAMES = ("train", "test", "val", "heldout", "train_prefs", "train_sft", "test_prefs",
               "dev", "data", "part-00000-of-00002")
HOSTILE_LINES = [b"{broken\n", b'{"prompt": "\xff\xfe"}\n', b"[" * 100_000 + b"\n",
                 b'{"prompt": "Q", "chosen": ' + b"9" * 5000 + b', "rejected": "n"}\n',
                 b'{"prompt": "Q", "chosen": " a", "chosen": " b", "rejected": " c"}\n',
                 b"null\n", b"\x00\x00\x00\n", b'"just a string"\n',
                 b'{"prompt": "Q", "chosen": " a", "rejected": " b", "x": ' + b"[" * 900
                 + b"]" * 900 + b"}\n"]
OUTCOMES: Counter = Counter()


def _report_outcomes() -> None:
    path = os.environ.get("PREFTUNE_FUZZ_REPORT")
    if path and OUTCOMES:
        Path(path).write_text(json.dumps(dict(OUTCOMES), indent=1, sort_keys=True))


atexit.register(_report_outcomes)


# -- writing rows as files -------------------------------------------------------------

def _jsonable(rows: list) -> list:
    """Rows as JSON can hold them (floats like nan stay: json writes NaN, which Python's
    reader accepts and other readers refuse)."""
    return json.loads(json.dumps(rows, default=str))


def _table(rows: list):
    """An Arrow table of the rows, or of their JSON text per column where the values do
    not share one Arrow type (as a conversion script would fall back)."""
    import pyarrow as pa

    dicts = [row if isinstance(row, dict) else {"value": row} for row in rows]
    try:
        return pa.Table.from_pylist(dicts)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        columns = sorted({str(k) for row in dicts for k in row})
        text = [{c: (v if isinstance(v, str) or v is None else json.dumps(v, default=str))
                 for c in columns for v in [row.get(c)]} for row in dicts]
        return pa.Table.from_pylist(text)


def encode(rows: list, kind: str, rng: random.Random, hostile: bool = True) -> bytes:
    """``rows`` as a file of ``kind``; with ``hostile``, JSON lines get hostile lines mixed
    in and CSV sometimes a byte that is not UTF-8."""
    import pyarrow as pa

    rows = _jsonable(rows)
    if kind in ("jsonl", "json_lines"):
        lines = [(json.dumps(row, ensure_ascii=rng.random() < 0.5) + "\n").encode()
                 for row in rows]
        for _ in range(rng.randrange(3) if hostile else 0):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(HOSTILE_LINES))
        return b"".join(lines)
    if kind == "json":
        return json.dumps(rows).encode()
    if kind == "csv":
        return _csv(rows, rng, hostile)
    try:
        return _arrow_bytes(_table(rows), kind)
    except (pa.ArrowException, TypeError, ValueError):  # e.g. parquet has no empty structs
        return _arrow_bytes(_table([{"value": json.dumps(row)} for row in rows]), kind)


def _arrow_bytes(table, kind: str) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        opener = pa.ipc.new_stream if kind == "arrow_stream" else pa.ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _csv(rows: list, rng: random.Random, hostile: bool) -> bytes:
    dicts = [row if isinstance(row, dict) else {"value": row} for row in rows]
    columns = sorted({str(k) for row in dicts for k in row}) or ["prompt"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in dicts:
        writer.writerow([v if isinstance(v, str) else json.dumps(v)
                         for c in columns for v in [row.get(c, "")]])
    data = out.getvalue().encode("utf-8", errors="surrogatepass")
    if hostile and rng.random() < 0.3:  # one byte from another encoding
        position = rng.randrange(len(data) + 1)
        data = data[:position] + b"\xe9" + data[position:]
    return data


EXTENSIONS = {"jsonl": ".jsonl", "json": ".json", "json_lines": ".json", "csv": ".csv",
              "parquet": ".parquet", "arrow_stream": ".arrow", "arrow_file": ".arrow"}


def write_file(folder: Path, stem: str, rows: list, kind: str, gz: bool,
               rng: random.Random) -> Path:
    data = encode(rows, kind, rng)
    path = folder / (stem + EXTENSIONS[kind] + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


# -- the driver: the loading path of `preftune train` ----------------------------------

def load(path: Path, skip: bool, tokenizer) -> str:
    """How loading ``path`` ended (for the counts); fails the test on anything but pairs, a
    DataError naming the file, or a whole-dataset ConfigError naming it."""
    from preftune import setup
    from preftune.validation import validate

    config = load_config(None, [
        "--method", "simpo", "--dataset_name", str(path), "--max_length", "48",
        "--max_prompt_length", "24", "--skip_bad_rows", str(skip).lower(),
        "--tokenized_cache", "false", "--output_dir", str(path.parent / "out")])
    try:
        train, _ = setup.build_pairs(config, tokenizer, validate(config, loads_model=False),
                                     log=lambda *_: None)
    except DataError as error:
        message = str(error)
        assert str(path) in message, message
        if error.row is not None:
            assert not skip, f"skip_bad_rows still raised {message}"
            assert error.field is not None and f"field {error.field!r}" in message, message
            assert f"row {error.origin.row}" in message, message
        return "rejected, DataError: " + error.reason.replace(f" in {path}", "")
    except ConfigError as error:
        message = str(error)
        assert str(path) in message or "unpaired" in message, message
        return "rejected, ConfigError: " + _gist(message.replace(str(path), "PATH"))
    assert len(train) > 0
    return "accepted (pairs)"


def _gist(message: str) -> str:
    for words in ("cannot recognise the data format", "unpaired", "several", "not clear",
                  "no training rows", "no training split", "no split", "eval_fraction"):
        if words in message:
            return words
    return message[:60]


def record(outcome: str) -> None:
    OUTCOMES["inputs"] += 1
    OUTCOMES[outcome] += 1
    event(outcome)


# -- campaign 1: hostile rows, every file type -----------------------------------------

@FUZZ
@given(rows=datasets(max_size=8), kind=st.sampled_from(KINDS), gz=st.booleans(),
       skip=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_rows_in_every_file_type_load_or_name_the_file(smollm2, rows, kind, gz, skip, seed):
    with tempfile.TemporaryDirectory() as folder:
        path = write_file(Path(folder), "data", rows, kind, gz, random.Random(seed))
        record(load(path, skip, smollm2))


@FUZZ
@given(parts=st.lists(st.tuples(datasets(max_size=5), st.sampled_from(KINDS), st.booleans()),
                      min_size=1, max_size=3),
       names=st.lists(st.sampled_from(SPLIT_NAMES), min_size=3, max_size=3, unique=True),
       skip=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_folders_of_files_load_or_name_the_file(smollm2, parts, names, skip, seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "data"
        folder.mkdir()
        for (rows, kind, gz), name in zip(parts, names):
            write_file(folder, name, rows, kind, gz, rng)
        record(load(folder, skip, smollm2))


# -- campaign 2: valid files, corrupted bytes ------------------------------------------

VALID = [{"prompt": f"Question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}"}
         for i in range(6)]


def corrupt(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "truncate":
        return data[:rng.randrange(len(data))]
    if how == "flip":
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(1, 64))
    return data[:start] + bytes(end - start) + data[end:]


@FUZZ
@given(kind=st.sampled_from(KINDS), gz=st.booleans(),
       how=st.sampled_from(["truncate", "flip", "zero"]), skip=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_corrupted_bytes_load_or_name_the_file(smollm2, kind, gz, how, skip, seed):
    rng = random.Random(seed)
    data = encode(VALID, kind, random.Random(0), hostile=False)
    data = gzip.compress(data, mtime=0) if gz else data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("data" + EXTENSIONS[kind] + (".gz" if gz else ""))
        path.write_bytes(corrupt(data, how, rng))
        record(load(path, skip, smollm2))


@FUZZ
@given(rows=datasets(max_size=5, clean=True), kind=st.sampled_from(KINDS),
       named=st.sampled_from(sorted(set(EXTENSIONS.values()))), gz=st.booleans(),
       gz_name=st.booleans(), skip=st.booleans())
def test_wrong_names_load_or_name_the_file(smollm2, rows, kind, named, gz, gz_name, skip):
    """Parquet named .jsonl, JSON lines named .csv, a .gz name on a plain file or none on a
    compressed one."""
    data = encode(rows, kind, random.Random(0), hostile=False)
    data = gzip.compress(data, mtime=0) if gz else data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("data" + named + (".gz" if gz_name else ""))
        path.write_bytes(data)
        record(load(path, skip, smollm2))
