"""JSON and JSON-lines bytes -> rows that know their file, row and line.

A JSON array (or one object, or ``{"data": [...]}``) is parsed whole: if it cannot be, the
file is unreadable. JSON lines are parsed one line at a time: a line that is not UTF-8,
not JSON, nested deeper than Python can parse, holds an integer too long to convert
(over 4,300 digits), repeats a key, or is not an object is one :class:`BadRow`.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from preftune.data.origin import BadRow, RowOrigin, Source, SourcedRow, file_error

BOM = b"\xef\xbb\xbf"


class _Repeated(dict):
    """An object in which a key appeared more than once (``json`` keeps the last value
    silently): the first repeated key."""

    repeated: str


def _pairs_hook(pairs: list) -> dict:
    values = dict(pairs)
    if len(values) == len(pairs):
        return values
    seen: set = set()
    repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
    marked = _Repeated(values)
    marked.repeated = repeated
    return marked


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_pairs_hook)


MAX_DEPTH = 64
"""Nesting a row may have. Preference rows nest three deep (row, message list, message);
a row nested hundreds deep parses, then breaks the next recursive step (pickling it to a
worker, hashing it), so it is refused here as a bad row."""


def _problem(value: Any) -> Optional[tuple[str, str, str]]:
    """(field, reason, detail) for a repeated key or too deep a nesting anywhere inside
    ``value``, else None (iterative: values can be deep)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "row", "nested too deeply", f"more than {MAX_DEPTH} levels of lists/objects"
        if isinstance(item, _Repeated):
            return (str(item.repeated), "duplicate key",
                    f"{item.repeated!r} appears twice in one object; which value is meant?")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def to_row(value: Any, origin: RowOrigin) -> SourcedRow:
    """One parsed value as a row, or the reason it cannot be one."""
    if not isinstance(value, dict):
        return BadRow(origin, "row", "wrong type",
                      f"a row must be an object, got {type(value).__name__}")
    problem = _problem(value)
    if problem is not None:
        return BadRow(origin, *problem)
    return SourcedRow(value, origin)


def read_json(raw: bytes, source: Source) -> list[SourcedRow]:
    # Editors on Windows save UTF-8 with a byte-order mark; json.loads refuses it.
    raw = raw[len(BOM):] if raw.startswith(BOM) else raw
    stripped = raw.lstrip()
    if stripped.startswith((b"[", b"{")):
        whole, problem = _parse_whole(raw)
        if problem is not None and stripped.startswith(b"["):
            raise file_error(source.path, "not a readable JSON array", problem, source.role)
        if isinstance(whole, list):
            return [to_row(value, RowOrigin(source, index)) for index, value in enumerate(whole)]
        if isinstance(whole, dict):
            lists = [v for v in whole.values() if isinstance(v, list)]
            if len(lists) == 1 and len(whole) == 1:
                return [to_row(value, RowOrigin(source, index))
                        for index, value in enumerate(lists[0])]
            return [to_row(whole, RowOrigin(source, 0, 1))]
    return read_json_lines(raw, source)


def _parse_whole(raw: bytes) -> tuple[Any, Optional[str]]:
    """(value, None), or (None, why it is not one JSON value)."""
    try:
        return _loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as error:
        return None, f"not UTF-8: {error.reason} at byte {error.start}"
    except RecursionError:
        return None, "nested too deeply to parse"
    except ValueError as error:  # JSONDecodeError, and integers over 4,300 digits
        return None, _why(error)


def _why(error: ValueError) -> str:
    if "integer string conversion" in str(error):
        # Python refuses to convert integers this long (a guard against slow parsing).
        return "an integer of more than 4,300 digits"
    return str(error)


def read_json_lines(raw: bytes, source: Source) -> list[SourcedRow]:
    rows: list[SourcedRow] = []
    for line_number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        origin = RowOrigin(source, len(rows), line_number)
        rows.append(_line_row(line, origin))
    # Not one line parses: likely not JSON lines at all (another format under this name).
    if rows and all(isinstance(row, BadRow) and row.reason == "unreadable line"
                    for row in rows):
        raise file_error(source.path, "no line is valid JSON",
                         f"line {rows[0].origin.line}: {rows[0].detail}", source.role)
    return rows


def _line_row(line: bytes, origin: RowOrigin) -> SourcedRow:
    try:
        value = _loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return BadRow(origin, "row", "unreadable line",
                      f"not UTF-8: {error.reason} at byte {error.start}")
    except RecursionError:
        return BadRow(origin, "row", "unreadable line", "not valid JSON: nested too deeply "
                      "to parse")
    except ValueError as error:  # JSONDecodeError, and integers over 4,300 digits
        return BadRow(origin, "row", "unreadable line", f"not valid JSON: {_why(error)}")
    return to_row(value, origin)
