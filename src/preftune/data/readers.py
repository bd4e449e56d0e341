"""Local files -> rows that know their origin (origin.py): .jsonl, .json, .csv, .parquet,
.arrow, each optionally gzip-compressed.

Every failure ends as a :class:`DataError` naming the file: a file that cannot be read at
all (empty, corrupt, truncated, not the compression its name says) as a whole-file error,
and where the format has rows of its own (JSON lines, CSV records) a bad row as a
:class:`BadRow` in its place, so one broken line is one bad row, not a failed file.
Files are read without ``datasets`` (slow to import; it caches copies).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

from preftune.data.csvfile import read_csv
from preftune.data.jsonfile import read_json
from preftune.data.origin import DataError, RowOrigin, Source, SourcedRow, file_error
from preftune.errors import ConfigError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def format_suffix(path: Path) -> Optional[str]:
    """``.jsonl`` for ``a.jsonl`` and ``a.jsonl.gz``; None for an unknown type."""
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    suffix = suffixes[0].lower() if suffixes else ""
    return suffix if suffix in EXTENSIONS else None


def read_file(path: Path, role: str = "train") -> list[dict]:
    """Rows of one file; ``role`` ("train" or "eval") is named in its errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = format_suffix(path)
    if suffix is None:
        raise ConfigError(f"unknown data file type: {path.name} (supported: "
                          f"{', '.join(EXTENSIONS)}, each optionally .gz)")
    source = Source(str(path), role)
    raw = _read_bytes(path, source)
    if not raw.strip():
        raise file_error(path, "empty file", "it holds no rows", role)
    if suffix in (".jsonl", ".json"):
        rows = read_json(raw, source)
    elif suffix == ".csv":
        rows = read_csv(raw, source)
    else:
        rows = _read_arrow(raw, source, suffix)
    if not rows:
        raise file_error(path, "no rows", "the file holds no data rows", role)
    return rows


def _read_bytes(path: Path, source: Source) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise file_error(path, "cannot read the file", error.strerror or str(error),
                         source.role) from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise file_error(path, "not a readable gzip file", _gzip_fix(error),
                         source.role) from None


def _gzip_fix(error: BaseException) -> str:
    text = str(error)
    if "Not a gzipped file" in text:
        return ("the name ends in .gz but the file is not gzip-compressed: remove .gz from "
                "its name")
    if isinstance(error, EOFError):
        return "the file ends early (an interrupted download or copy?): fetch it again"
    return f"{text}: the file is corrupt; fetch it again"


def _read_arrow(raw: bytes, source: Source, suffix: str) -> list[dict]:
    import pyarrow as pa

    kind = "parquet" if suffix == ".parquet" else "Arrow"
    try:
        table = _arrow_table(pa, raw, suffix)
        # Arrow trusts the offsets it reads: check them before reading values through
        # them (a flipped bit could otherwise point outside the buffers).
        table.validate(full=True)
        _check_columns(table.column_names, source)
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError, OverflowError) as error:
        raise file_error(source.path, f"not a readable {kind} file",
                         str(error).splitlines()[0] if str(error) else type(error).__name__,
                         source.role) from None
    return [SourcedRow(row, RowOrigin(source, index)) for index, row in enumerate(rows)]


def _check_columns(names: list[str], source: Source) -> None:
    # A row dict would keep only the last of two same-named columns, silently.
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise file_error(source.path, "duplicate column", f"two columns are named "
                         f"{repeated[0]!r}", source.role)


def _arrow_table(pa, raw: bytes, suffix: str):
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(raw))
    try:  # Dataset.save_to_disk writes the IPC stream format; pyarrow.feather the file format
        return pa.ipc.open_stream(pa.BufferReader(raw)).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.BufferReader(raw)).read_all()


__all__ = ["DataError", "EXTENSIONS", "format_suffix", "read_file"]
