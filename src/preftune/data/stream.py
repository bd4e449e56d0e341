"""Rows read as they stream (``streaming: true``): a JSON-lines file line by line, or a hub
dataset through ``datasets``' streaming mode, so a source larger than memory can be
tokenized (prepare.py writes its pairs chunk by chunk).

A local file streams with a key made of its path, size and modification time, so a later
run finds its tokenized pairs without reading it. Rows keep their place in the file (row
and line), as when the whole file is read, so errors name the same row.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Iterator, Optional

from preftune.config import DataConfig
from preftune.errors import ConfigError

STREAMED = (".jsonl", ".jsonl.gz")
BOM = b"\xef\xbb\xbf"


def streamed_rows(data: DataConfig) -> tuple[Iterable[dict], Optional[str]]:
    """(train rows as an iterable, the key of their source or None); refused for settings
    that need all rows at once."""
    if data.dataset_mixer or data.eval_fraction:
        raise ConfigError("streaming: true reads the rows once, in order: dataset_mixer and "
                          "eval_fraction need them all at once (give eval_dataset instead)")
    name = data.dataset_name
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_file() or not path.name.endswith(STREAMED):
            raise ConfigError(f"streaming: true reads one JSON-lines file (.jsonl or "
                              f".jsonl.gz) or a hub dataset; {name} is neither")
        stat = path.stat()
        rows: Iterable[dict] = _FileRows(path)
        key = f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        rows, key = _hub_rows(name, data.dataset_train_split, data.dataset_config), None
    if data.max_train_samples:
        rows, key = _Capped(rows, data.max_train_samples), key and (
            f"{key}:first {data.max_train_samples}")
    return rows, key


class _FileRows:
    """The rows of a JSON-lines file, read again on each iteration."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[dict]:
        from preftune.data.jsonfile import _line_row  # one line -> a row that knows its place
        from preftune.data.origin import RowOrigin, Source

        source, row = Source(str(self.path)), 0
        opener = gzip.open if self.path.name.endswith(".gz") else open
        with opener(self.path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                line = line[3:] if number == 1 and line.startswith(BOM) else line
                if line.strip():
                    yield _line_row(line.rstrip(b"\r\n"), RowOrigin(source, row, number))
                    row += 1


class _Capped:
    def __init__(self, rows: Iterable[dict], limit: int):
        self.rows, self.limit = rows, limit

    def __iter__(self) -> Iterator[dict]:
        from itertools import islice

        return islice(iter(self.rows), self.limit)


def _hub_rows(name: str, split: str, config: Optional[str]) -> Iterable[dict]:
    from datasets import load_dataset

    try:
        return load_dataset(name, config, split=split, streaming=True)
    except Exception as error:  # datasets raises many kinds; the name is what to check
        raise ConfigError(f"dataset_name {name!r}: cannot stream it from the hub "
                          f"({type(error).__name__}: {error})") from None
