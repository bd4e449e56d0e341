"""Where a row came from, and the error that says so.

A row read from a file remembers its file, its place in that file (the row as pandas or
pyarrow count it, and for JSON lines and CSV the 1-based line an editor shows) and whether
the file is training or evaluation data. The row keeps that through everything that
reorders or subsets rows (eval hold-out, mixing, caps), so a :class:`DataError` raised at
any later station names the row as the user finds it in the file, not its place in some
intermediate list. Rows built in memory carry nothing and are named by their list index.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Source:
    """One file (or hub split) rows come from. ``role``: "train", "eval", or "held out for
    eval" (rows of a training file that ``eval_fraction`` moved to evaluation)."""

    path: str
    role: str = "train"

    def describe(self) -> str:
        if self.role == "eval":
            return f"eval file {self.path}"
        if self.role != "train":
            return f"{self.path} ({self.role})"
        return self.path


@dataclass(frozen=True)
class RowOrigin:
    """A row's place in its source: ``row`` counted from 0 (as pandas and pyarrow do),
    ``line`` the 1-based line it starts on (JSON lines and CSV only)."""

    source: Source
    row: Optional[int] = None
    line: Optional[int] = None

    def describe(self) -> str:
        where = self.source.describe()
        if self.line is not None:
            return f"{where}: line {self.line} (row {self.row})"
        return f"{where}: row {self.row}" if self.row is not None else where

    def with_role(self, role: str) -> "RowOrigin":
        return RowOrigin(Source(self.source.path, role), self.row, self.line)


class SourcedRow(dict):
    """A row (a plain dict to every reader) that knows its :class:`RowOrigin`."""

    __slots__ = ("origin",)

    def __init__(self, values: dict, origin: RowOrigin):
        super().__init__(values)
        self.origin = origin

    def __reduce__(self):
        # Rows sent to other processes (datasets' workers, broadcast) keep their origin.
        return (_rebuild, (dict(self), self.origin))


def _rebuild(values: dict, origin: RowOrigin) -> "SourcedRow":
    return SourcedRow(values, origin)


class BadRow(SourcedRow):
    """A row that could not be read as one (a line that is not JSON or not UTF-8, a CSV
    record with the wrong number of fields, a duplicate key, a value that is not an
    object). It stays in the rows, in its place, so that normalize_rows reports it by its
    place like any other bad row, or counts it with ``skip_bad_rows``, instead of one
    broken row failing the whole file."""

    __slots__ = ("field", "reason", "detail")

    def __init__(self, origin: RowOrigin, field: str, reason: str, detail: str):
        super().__init__({}, origin)
        self.field, self.reason, self.detail = field, reason, detail

    def __reduce__(self):
        return (BadRow, (self.origin, self.field, self.reason, self.detail))


def relabel(row, role: str):
    """``row`` as a row of the same source with another role (eval_fraction's held-out
    rows); rows without an origin are returned as they are."""
    if not isinstance(row, SourcedRow):
        return row
    moved = copy.copy(row)
    moved.origin = row.origin.with_role(role)
    return moved


class RowIndex(int):
    """A row's index in the list being tokenized that also carries the row's origin.

    normalize_rows hands these out, and every station after it raises
    ``DataError(index, ...)`` with them: the error then names the file and file row
    without each station threading origins through. Pickles as a plain int."""

    origin: Optional[RowOrigin]

    def __new__(cls, index: int, origin: Optional[RowOrigin]):
        value = super().__new__(cls, index)
        value.origin = origin
        return value

    def __reduce__(self):
        return (int, (int(self),))


def index_of(index: int, row) -> int:
    """``index`` as a :class:`RowIndex` when ``row`` knows its origin, else unchanged."""
    origin = getattr(row, "origin", None)
    return RowIndex(index, origin) if origin is not None else index


class DataError(ValueError):
    """Bad data, named so that it can be found: the file, the row as the file counts it,
    the field. ``reason`` is a short category (what the skip report counts); ``detail``
    the specifics. ``row`` is the index in the rows being processed (a :class:`RowIndex`
    names the file row); ``row`` None is a problem with a whole file."""

    def __init__(self, row: Optional[int], field: Optional[str], reason: str,
                 detail: Optional[str] = None, origin: Optional[RowOrigin] = None):
        self.row, self.field, self.reason, self.detail = row, field, reason, detail
        self.origin = origin if origin is not None else getattr(row, "origin", None)
        super().__init__(self._message())

    def _message(self) -> str:
        where = (self.origin.describe() if self.origin is not None
                 else f"row {self.row}" if self.row is not None else "")
        # A CSV column may be named "" and still be the field at fault: named as ''.
        field = f"field {self.field!r}" if self.field is not None else ""
        parts = [p for p in (where, field) if p]
        message = ", ".join(parts) + ": " * bool(parts) + self.reason
        return message + (f" ({self.detail})" if self.detail else "")

    @property
    def whole_file(self) -> bool:
        """A file that cannot be read at all: skipping rows cannot help."""
        return self.row is None

    def __reduce__(self):
        return (DataError, (int(self.row) if self.row is not None else None, self.field,
                            self.reason, self.detail, self.origin))


def file_error(path: Path | str, reason: str, detail: Optional[str] = None,
               role: str = "train") -> DataError:
    """A whole-file :class:`DataError` naming ``path``."""
    return DataError(None, None, reason, detail, RowOrigin(Source(str(path), role)))


def no_pairs_left(report, source: str = "the data") -> DataError:
    """Every training row of ``source`` was skipped or dropped: how many, and why
    (``report``: the tokenizing station's DataReport)."""
    skipped = sum(report.skipped.values())
    reasons = ", ".join(f"{reason} x{n}" for reason, n in report.skipped.most_common())
    parts = [f"{report.rows_in} rows read", f"{skipped} skipped as bad rows"
             + (f" ({reasons})" if reasons else ""),
             f"{report.dropped_too_long} dropped as too long for max_length",
             f"{report.dropped_identical} dropped as identical within max_length"]
    example = f"; first skipped: {report.skipped_examples[0]}" if report.skipped_examples else ""
    return DataError(None, None, f"no training pairs left in {source}",
                     ", ".join(parts) + example)
