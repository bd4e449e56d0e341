"""CSV bytes -> rows that know their file, row and line.

Parsed with Python's csv module rather than pyarrow's reader because it says where each
record starts, so a bad record is named by its line and is one bad row: a byte that is
not UTF-8 (pyarrow reads such a column as binary, which made every row of the file "wrong
type"), or a record with more or fewer fields than the header. Column types are inferred
as pyarrow would for the columns preference data has: a column whose every non-empty
value is true/false is bool, one of integers is int (so a 0/1 ``label`` works), any other
is text.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from typing import Any, Optional

from preftune.data.origin import BadRow, RowOrigin, Source, SourcedRow, file_error

BOM = "\ufeff"
# Decoding with surrogateescape turns each byte that is not UTF-8 into one of these.
_ESCAPED = re.compile("[\udc80-\udcff]")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_BOOLS = {"true": True, "false": False}


def read_csv(raw: bytes, source: Source) -> list[SourcedRow]:
    text = raw.decode("utf-8", errors="surrogateescape")
    text = text[len(BOM):] if text.startswith(BOM) else text
    csv.field_size_limit(sys.maxsize)  # long conversations exceed the 128 KiB default
    records = _records(text, source)
    if not records:
        raise file_error(source.path, "empty file", "no header line", source.role)
    (header_line, header), body = records[0], records[1:]
    _check_header(header, header_line, source)
    rows: list = []
    for line, fields in body:
        origin = RowOrigin(source, len(rows), line)
        rows.append(_record(header, fields, origin))
    good = [row for row in rows if not isinstance(row, BadRow)]
    for column, convert in _column_types(header, good).items():
        for row in good:
            row[column] = convert(row[column])
    return rows


def _records(text: str, source: Source) -> list[tuple[int, list[str]]]:
    """(start line, fields) of each non-blank record."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records, last_line = [], 0
    try:
        for fields in reader:
            start, last_line = last_line + 1, reader.line_num
            if fields:
                records.append((start, fields))
    except csv.Error as error:
        raise file_error(source.path, "not a readable CSV file",
                         f"line {reader.line_num + 1}: {error}", source.role) from None
    return records


def _check_header(header: list[str], line: int, source: Source) -> None:
    bad = next((name for name in header if _ESCAPED.search(name)), None)
    if bad is not None:
        raise file_error(source.path, "not a readable CSV file",
                         f"line {line}, the header, is not UTF-8", source.role)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise file_error(source.path, "duplicate column",
                         f"the header names {repeated[0]!r} twice", source.role)


def _record(header: list[str], fields: list[str], origin: RowOrigin) -> SourcedRow:
    if len(fields) != len(header):
        return BadRow(origin, "row", "wrong number of fields",
                      f"{len(fields)} fields, the header has {len(header)}")
    for name, value in zip(header, fields):
        match = _ESCAPED.search(value)
        if match:
            byte = ord(match.group()) - 0xDC00
            return BadRow(origin, name, "not UTF-8",
                          f"byte 0x{byte:02x} at character {match.start()} of the field; "
                          "save the file as UTF-8")
    return SourcedRow(dict(zip(header, fields)), origin)


def _column_types(header: list[str], rows: list[dict]) -> dict[str, Any]:
    """Column -> converter, for the bool and integer columns (empty cells become None)."""
    converters = {}
    for column in header:
        values = [row[column] for row in rows if row[column] != ""]
        if not values:
            continue
        if all(value.lower() in _BOOLS for value in values):
            converters[column] = _to_bool
        elif all(_INTEGER.fullmatch(value) for value in values):
            converters[column] = _to_int
    return converters


def _to_bool(value: str) -> Optional[bool]:
    return _BOOLS[value.lower()] if value else None


def _to_int(value: str) -> Optional[int]:
    return int(value) if value else None
