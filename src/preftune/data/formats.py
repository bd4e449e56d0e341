"""Raw rows -> ``PreferenceRow`` / ``UnpairedRow``: format detection, column mapping, checks.

A *layout* says which fields a dataset has: ``paired`` (prompt, chosen, rejected),
``implicit`` (chosen and rejected only; the prompt is their shared start) or ``unpaired``
(prompt, completion, label). Whether the texts are strings or message lists is decided per
row; a row that mixes the two is made conversational when that is unambiguous (a string
prompt becomes one user message, a string completion one assistant message).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from preftune.data.origin import BadRow, DataError, index_of
from preftune.errors import ConfigError

Messages = list[dict]
Text = Union[str, Messages]

FORMATS = ("auto", "standard", "conversational", "implicit", "unpaired")
TARGETS = ("prompt", "chosen", "rejected", "completion", "label")
ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
# The OpenAI fine-tuning preference schema, recognised when no column_mapping is given.
OPENAI_MAPPING = {"prompt": "input.messages", "chosen": "preferred_output",
                  "rejected": "non_preferred_output"}
# Enough rows to see every column without reading a large dataset twice.
DETECT_ROWS = 100


# A row that could not be read (origin.py); the old name is kept for importers.
UnreadableLine = BadRow


@dataclass
class PreferenceRow:
    prompt: Text
    chosen: Text
    rejected: Text

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class UnpairedRow:
    prompt: Text
    completion: Text
    label: bool

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


Row = Union[PreferenceRow, UnpairedRow]
_MISSING = object()


def get_path(row: dict, path: str) -> Any:
    """``row[path]``, or a dotted walk (``input.messages``) when no column has that name."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def detect_format(rows: list[dict], data_format: str = "auto",
                  column_mapping: Optional[dict] = None) -> tuple[str, dict]:
    """The layout (paired, implicit, unpaired) and the full ``{target: source}`` mapping.

    Decided once from the first rows, so that a row lacking a field is reported as missing
    it rather than silently read as another format."""
    if data_format not in FORMATS:
        raise ConfigError(f"unknown data_format {data_format!r}; use one of {', '.join(FORMATS)}")
    unknown = set(column_mapping or {}) - set(TARGETS)
    if unknown:
        raise ConfigError(f"column_mapping keys {sorted(unknown)} are not among {TARGETS}")
    bad = {k: v for k, v in (column_mapping or {}).items() if not isinstance(v, str) or not v}
    if bad:
        raise ConfigError(f"column_mapping values must be column names (strings), got {bad}")
    sample = format_sample(rows)
    mapping = {name: name for name in TARGETS}
    if column_mapping:
        mapping.update(column_mapping)
    elif all(any(_present(r, path) for r in sample) for path in OPENAI_MAPPING.values()):
        mapping.update(OPENAI_MAPPING)
    if not sample and data_format == "auto":
        # No row is a readable object: each is reported (or skipped) by normalize_row
        # under its own reason, not as one unrecognisable format.
        return "paired", mapping
    present = {t for t in TARGETS if any(_present(r, mapping[t]) for r in sample)}
    if data_format == "unpaired" or (data_format == "auto" and {"completion", "label"} <= present
                                     and "chosen" not in present):
        return "unpaired", mapping
    if data_format == "implicit" or (data_format == "auto" and "prompt" not in present
                                     and {"chosen", "rejected"} <= present):
        return "implicit", mapping
    if data_format != "auto" or {"chosen", "rejected"} <= present:
        return "paired", mapping
    columns = sorted({str(key) for r in sample for key in r})
    origin = getattr(sample[0] if sample else None, "origin", None)
    where = f"{origin.source.describe()}: " if origin is not None else ""
    raise ConfigError(
        f"{where}cannot recognise the data format from columns {columns}: expected prompt/chosen/"
        "rejected, chosen/rejected (implicit prompt), prompt/completion/label (unpaired) or "
        "the OpenAI preference schema; set data_format or column_mapping")


def format_sample(rows: list) -> list[dict]:
    """The first ``DETECT_ROWS`` rows that are readable objects: rows that are not (a stray
    number in a JSON file, a broken line) tell nothing about the columns; normalize_row
    reports them one by one."""
    sample = []
    for row in rows:
        if isinstance(row, dict) and not isinstance(row, BadRow):
            sample.append(row)
            if len(sample) == DETECT_ROWS:
                break
    return sample


def _present(row: dict, path: str) -> bool:
    return get_path(row, path) not in (_MISSING, None)


def normalize_rows(rows: list[dict], data_format: str = "auto",
                   column_mapping: Optional[dict] = None,
                   errors: Optional[list] = None) -> tuple[str, list[tuple[int, Row]]]:
    """``(layout, [(row index, normalized row)])``. Bad rows raise :class:`DataError`, or are
    appended to ``errors`` when a list is given."""
    layout, mapping = detect_format(rows, data_format, column_mapping)
    out = []
    for position, raw in enumerate(rows):
        # The index carries the row's file and file row, so errors raised for it at any
        # later station name the row as the user finds it (origin.py).
        index = index_of(position, raw)
        try:
            out.append((index, normalize_row(raw, index, layout, mapping, data_format)))
        except DataError as error:
            if errors is None:
                raise
            errors.append(error)
    return layout, out


def normalize_row(raw: dict, index: int, layout: str, mapping: dict,
                  data_format: str = "auto") -> Row:
    if isinstance(raw, BadRow):
        raise DataError(index, raw.field, raw.reason, raw.detail)
    if not isinstance(raw, dict):
        raise DataError(index, "row", "wrong type", f"a row must be an object, got "
                        f"{type(raw).__name__}")
    def fetch(name: str) -> Any:
        return _fetch(raw, index, name, mapping[name])

    if layout == "implicit":
        prompt, chosen, rejected = _split_implicit(index, fetch("chosen"), fetch("rejected"))
        return _paired(index, prompt, chosen, rejected, data_format)
    if layout == "unpaired":
        prompt, completion, label = fetch("prompt"), fetch("completion"), fetch("label")
        label = _check_label(index, label)
        prompt, (completion,) = _unify(index, data_format, prompt, ("completion", completion))
        return UnpairedRow(prompt, completion, label)
    return _paired(index, fetch("prompt"), fetch("chosen"), fetch("rejected"), data_format)


def _paired(index: int, prompt: Any, chosen: Any, rejected: Any, data_format: str) -> PreferenceRow:
    prompt, (chosen, rejected) = _unify(index, data_format, prompt, ("chosen", chosen),
                                        ("rejected", rejected))
    if chosen == rejected:
        raise DataError(index, "rejected", "identical to chosen")
    return PreferenceRow(prompt, chosen, rejected)


def _fetch(raw: dict, index: int, name: str, source: str) -> Any:
    value = get_path(raw, source)
    if value is _MISSING or value is None:
        where = "" if source == name else f"column {source!r}"
        raise DataError(index, name, "missing field", where or None)
    return value


def _check_label(index: int, label: Any) -> bool:
    # Only real bools and 0/1 integers: a string such as "false" is truthy in Python, so
    # accepting strings invites silently flipped labels.
    if isinstance(label, (bool, numbers.Integral)) and label in (0, 1):
        return bool(label)
    raise DataError(index, "label", "wrong type", f"expected a bool or 0/1, got {label!r}")


def _unify(index: int, data_format: str, prompt: Any, *completions: tuple[str, Any]):
    """Checks the texts and makes them all strings or all message lists."""
    prompt = _check_text(index, "prompt", prompt)
    checked = [(name, _check_text(index, name, value)) for name, value in completions]
    texts = [prompt] + [value for _, value in checked]
    if data_format == "standard":
        for name, value in [("prompt", prompt)] + checked:
            if not isinstance(value, str):
                raise DataError(index, name, "wrong type", "expected a string "
                                "(data_format='standard')")
    if data_format == "conversational" or any(isinstance(t, list) for t in texts):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(index, "prompt", "empty prompt")
            prompt = [{"role": "user", "content": prompt}]
        if not prompt:
            raise DataError(index, "prompt", "empty prompt")
        checked = [(name, _strip_prefix(prompt, value) if isinstance(value, list)
                    else [{"role": "assistant", "content": value}]) for name, value in checked]
    for name, value in checked:
        content = value if isinstance(value, str) else "".join(m["content"] for m in value)
        if not content.strip():
            raise DataError(index, name, "empty completion")
        if isinstance(value, list) and value[-1]["role"] != "assistant":
            # Trained as it stands, the user's turn would be learned as the model's answer.
            raise DataError(index, name, f"ends with a {value[-1]['role']} turn",
                            "a completion must end with the assistant's message")
    return prompt, [value for _, value in checked]


def _strip_prefix(prompt: Messages, completion: Messages) -> Messages:
    """Completions that repeat the prompt messages (UltraFeedback style) lose them."""
    n = len(prompt)
    if len(completion) >= n and all(_same(a, b) for a, b in zip(prompt, completion[:n])):
        return completion[n:]
    return completion


def _same(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _check_encodable(index: int, field: str, text: str) -> str:
    # JSON may spell lone surrogates ("\\ud800"); they cannot become UTF-8 bytes, so no
    # tokenizer can read them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(index, field, "invalid unicode", f"{error.reason} at character "
                        f"{error.start}") from None
    return text


def _check_text(index: int, field: str, value: Any) -> Text:
    if isinstance(value, str):
        return _check_encodable(index, field, value)
    if not isinstance(value, (list, tuple)):
        raise DataError(index, field, "wrong type", "expected a string or a list of "
                        f"{{role, content}} messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(index, field, "bad message", f"message {i} needs 'role' and "
                            "'content'")
        if message["role"] not in ROLES:
            raise DataError(index, field, "unknown role", f"message {i} has role "
                            f"{message['role']!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(index, field, "wrong type", f"message {i} content must be a "
                            f"string, got {type(message['content']).__name__}")
        _check_encodable(index, field, message["content"])
        messages.append(dict(message))
    return messages


def _split_implicit(index: int, chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    """Prompt = the longest common start of both transcripts, cut at a turn boundary."""
    chosen = _check_text(index, "chosen", chosen)
    rejected = _check_text(index, "rejected", rejected)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(index, "rejected", "mixed strings and messages",
                        "chosen and rejected must both be strings or both message lists")
    if chosen == rejected:
        raise DataError(index, "rejected", "identical to chosen")
    if isinstance(chosen, str):
        # HH-RLHF: the prompt ends with (and includes) the last shared "\n\nAssistant:", so
        # each completion is the assistant's answer, starting with its leading space.
        cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
        if cut < 0:
            raise DataError(index, "prompt", "no shared prompt", "implicit-prompt strings "
                            "must be HH-RLHF transcripts ('\\n\\nHuman: ... \\n\\nAssistant: "
                            "...'); otherwise give a prompt column")
        end = cut + len(HH_ASSISTANT)
        return chosen[:end], chosen[end:], rejected[end:]
    shared = 0
    while (shared < min(len(chosen), len(rejected))
           and _same(chosen[shared], rejected[shared])):
        shared += 1
    # Back up to a turn where both transcripts continue with an assistant message.
    for end in range(min(shared, len(chosen) - 1, len(rejected) - 1), 0, -1):
        if chosen[end]["role"] == rejected[end]["role"] == "assistant":
            return chosen[:end], chosen[end:], rejected[end:]
    raise DataError(index, "prompt", "no shared prompt", "chosen and rejected share no "
                    "messages before an assistant turn")


def pairs_to_unpaired(rows: list[PreferenceRow]) -> list[UnpairedRow]:
    """Each pair -> a desirable (chosen) and an undesirable (rejected) row, for KTO.

    Order: all desirable rows, then all undesirable ones, so that neighbours come from
    different pairs (KTO's KL term pairs each completion with its neighbour's prompt)."""
    return ([UnpairedRow(r.prompt, r.chosen, True) for r in rows]
            + [UnpairedRow(r.prompt, r.rejected, False) for r in rows])
