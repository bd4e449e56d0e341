"""Normalized rows -> :class:`TokenizedPair`: chat template, BOS/EOS, truncation, a report.

The prompt and each completion are tokenized separately (``add_special_tokens=False``) and
concatenated, so the prompt ids are an exact prefix of every sequence the model sees.
Truncation cuts the prompt from the left first, then the completions from the right, and
never leaves a completion empty: averaging log-probs over zero tokens is 0/0 = NaN.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from jinja2 import TemplateError

from preftune.errors import ConfigError
from preftune.data.formats import (DataError, PreferenceRow, Row, detect_format,
                                   normalize_row, pairs_to_unpaired)
from preftune.data.origin import index_of
from preftune.types import TokenizedPair

MAX_EXAMPLES = 5  # bad rows quoted in the report


@dataclass
class DataReport:
    """What happened to the rows on their way to tokenized pairs."""

    rows_in: int = 0
    pairs_out: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Bad rows skipped (``skip_bad_rows``), by reason."""
    skipped_examples: list = field(default_factory=list)
    dropped_too_long: int = 0
    """Rows whose (truncated) prompt left no room for a completion token."""
    dropped_identical: int = 0
    """Pairs whose two completions became the same tokens once cut to ``max_length``: no
    preference left to learn from."""
    prompts_truncated: int = 0
    completions_truncated: int = 0
    data_format: str = ""
    _skipped_rows: set = field(default_factory=set, repr=False)

    def record(self, error: DataError) -> None:
        # A paired row split into two KTO examples can fail twice; count it once.
        if error.row in self._skipped_rows:
            return
        self._skipped_rows.add(error.row)
        self.skipped[error.reason] += 1
        if len(self.skipped_examples) < MAX_EXAMPLES:
            self.skipped_examples.append(str(error))

    def add_counts(self, other: "DataReport") -> None:
        """Adds a chunk's truncation and drop counts (skips are settled one by one)."""
        self.dropped_too_long += other.dropped_too_long
        self.dropped_identical += other.dropped_identical
        self.prompts_truncated += other.prompts_truncated
        self.completions_truncated += other.completions_truncated

    def summary(self) -> str:
        lines = [f"data: {self.rows_in} rows ({self.data_format or 'empty'}) -> "
                 f"{self.pairs_out} examples"]
        if self.skipped:
            reasons = ", ".join(f"{reason} x{n}" for reason, n in self.skipped.most_common())
            lines.append(f"  skipped {sum(self.skipped.values())} bad rows: {reasons}")
            lines += [f"    e.g. {example}" for example in self.skipped_examples]
        if self.dropped_too_long:
            lines.append(f"  dropped {self.dropped_too_long} rows whose prompt leaves no room "
                         "for a completion (raise max_length or lower max_prompt_length)")
        if self.dropped_identical:
            lines.append(f"  dropped {self.dropped_identical} pairs whose completions are "
                         "identical within max_length")
        lines.append(f"  truncated {self.prompts_truncated} prompts (from the left) and "
                     f"{self.completions_truncated} completions (from the right)")
        return "\n".join(lines)


@dataclass(frozen=True)
class TokenizeSettings:
    """How rows become pairs; every field is part of the tokenized cache's key (store.py)."""

    max_length: int
    max_prompt_length: Optional[int] = None
    data_format: str = "auto"
    column_mapping: Optional[dict] = None
    skip_bad_rows: bool = False
    unpaired: bool = False
    chat_template: Optional[str] = None

    def checked(self) -> "TokenizeSettings":
        """The settings with ``max_prompt_length`` resolved, refused if they cannot work."""
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2 (a prompt and a completion token), "
                              f"got {self.max_length}")
        limit = self.max_length - 1 if self.max_prompt_length is None else self.max_prompt_length
        if limit < 1:
            raise ConfigError(f"max_prompt_length must be >= 1, got {limit}")
        return replace(self, max_prompt_length=limit)


@dataclass
class Chunk:
    """The examples of consecutive rows, before the errors are settled.

    ``pairs[k].example_id`` is the row index; ``halves[k]`` is 1 for the rejected half of a
    paired row split into two KTO examples. Unpaired examples keep ``rejected_ids`` empty
    and their uncut completion in ``full`` with its ``budgets`` (the KL estimate takes the
    neighbour's, which may sit in another chunk)."""

    pairs: list = field(default_factory=list)
    halves: list = field(default_factory=list)
    full: list = field(default_factory=list)
    budgets: list = field(default_factory=list)
    render_errors: list = field(default_factory=list)
    cut_errors: list = field(default_factory=list)
    report: DataReport = field(default_factory=DataReport)
    kinds: set = field(default_factory=set)


def tokenize_rows(rows: list[dict], tokenizer, *, max_length: int,
                  max_prompt_length: Optional[int], data_format: str = "auto",
                  column_mapping: Optional[dict] = None, skip_bad_rows: bool = False,
                  unpaired: bool = False, chat_template: Optional[str] = None,
                  ) -> tuple[list[TokenizedPair], DataReport]:
    """Raw rows -> tokenized examples and a :class:`DataReport`.

    ``example_id`` is the row's index in ``rows``. With ``unpaired`` (KTO), paired rows give
    two examples: the chosen one keeps the row index, the rejected one gets
    ``len(rows) + index``; ``rejected_ids`` then holds the next example's completion (the
    mismatched completion for KTO's KL estimate). ``max_prompt_length`` None: no prompt cut
    beyond what ``max_length`` forces. (store.py's ``tokenize_to_store`` does the same in
    bounded chunks, to an on-disk cache.)
    """
    settings = TokenizeSettings(max_length, max_prompt_length, data_format, column_mapping,
                                skip_bad_rows, unpaired, chat_template).checked()
    report = DataReport(rows_in=len(rows))
    if not rows:
        return [], report
    chunk = ChunkTokenizer(tokenizer, settings, rows)(rows, 0)
    report.data_format = chunk.report.data_format
    settle(chunk.render_errors, skip_bad_rows, report)
    settle(chunk.cut_errors, skip_bad_rows, report)
    report.add_counts(chunk.report)
    pairs = chunk.pairs
    for pair, half in zip(pairs, chunk.halves):
        pair.example_id += half * len(rows)
    if unpaired:
        # KTO's KL estimate scores a completion under a prompt it does not answer: take the
        # next example's (wrapping around), cut to this prompt's budget.
        for k, pair in enumerate(pairs):
            pair.rejected_ids = chunk.full[(k + 1) % len(pairs)][:chunk.budgets[k]]
    report.pairs_out = len(pairs)
    return pairs, report


class ChunkTokenizer:
    """Tokenizes the rows of one source chunk by chunk, each chunk as the whole list would
    be: the layout is decided once, from the source's first rows (as
    :func:`~preftune.data.formats.detect_format` decides it), and row numbers count from
    the source's first row."""

    def __init__(self, tokenizer, settings: TokenizeSettings, first_rows: list):
        self.settings = settings
        self.layout, self.mapping = detect_format(first_rows, settings.data_format,
                                                  settings.column_mapping)
        if self.layout == "unpaired" and not settings.unpaired:
            raise ConfigError("the rows are unpaired (prompt, completion, label): they need "
                              "an unpaired objective such as KTO")
        self.tokenizer, self.specials = tokenizer, _Specials(tokenizer)
        self.renderer = _Renderer(tokenizer, settings.chat_template, self.specials.eos_text)

    def __call__(self, rows: list, start: int) -> Chunk:
        """The examples of ``rows``, the first being the source's row ``start``."""
        chunk = Chunk(report=DataReport(rows_in=len(rows)))
        normalized = self._normalize(rows, start, chunk.render_errors)
        rows_only = [row for _, row in normalized]
        chunk.kinds = {"conversational" if r.conversational else "strings" for r in rows_only}
        chunk.report.data_format = describe(self.layout, chunk.kinds)
        if self.settings.unpaired and self.layout != "unpaired":
            indices = [index for index, _ in normalized]
            halves = [0] * len(indices) + [1] * len(indices)
            examples = list(zip(indices + indices, halves, pairs_to_unpaired(rows_only)))
        else:
            examples = [(index, 0, row) for index, row in normalized]
        rendered = _render(examples, self.renderer, chunk.render_errors)
        if chunk.render_errors and not self.settings.skip_bad_rows:
            return chunk  # the earliest of these stops the run: nothing more to tokenize
        _cut(rendered, self.tokenizer, self.specials, self.settings, chunk)
        return chunk

    def _normalize(self, rows: list, start: int, errors: list) -> list[tuple[int, Row]]:
        out = []
        for offset, raw in enumerate(rows):
            # Carries the row's file and file row into every later error (origin.py).
            index = index_of(start + offset, raw)
            try:
                out.append((index, normalize_row(raw, index, self.layout, self.mapping,
                                                 self.settings.data_format)))
            except DataError as error:
                errors.append(error)
        return out


def _render(examples: list, renderer: "_Renderer", errors: list[DataError]) -> list[tuple]:
    """(row index, half, prompt text, completion texts, label) per example that renders;
    the others go to ``errors``."""
    rendered = []
    for index, half, row in examples:
        try:
            prompt, completions = renderer.render(index, row)
        except DataError as error:
            errors.append(error)
            continue
        rendered.append((index, half, prompt, completions, getattr(row, "label", None)))
    return rendered


def _cut(rendered: list[tuple], tokenizer, specials: "_Specials",
         settings: TokenizeSettings, chunk: Chunk) -> None:
    """Token ids cut to fit: the prompt from the left to ``max_prompt_length``, then the
    completions from the right to what ``max_length`` leaves; into ``chunk``."""
    # One batched call per kind of text: fast tokenizers parallelise over the batch.
    prompt_ids = _encode(tokenizer, [r[2] for r in rendered])
    flat = _encode(tokenizer, [text for r in rendered for text in r[3]])
    report, position = chunk.report, 0
    for (index, half, _, texts, label), prompt in zip(rendered, prompt_ids):
        completions = [specials.with_eos(ids) for ids in flat[position:position + len(texts)]]
        position += len(texts)
        prompt = specials.with_bos(prompt)
        if not prompt:
            chunk.cut_errors.append(DataError(index, "prompt", "empty prompt",
                                              "the prompt has no tokens"))
            continue
        if len(prompt) > settings.max_prompt_length:
            prompt = _cut_left(prompt, settings.max_prompt_length,
                               keep_first=specials.starts(prompt))
            report.prompts_truncated += 1
        budget = settings.max_length - len(prompt)
        if budget < 1:
            report.dropped_too_long += 1
            continue
        if label is None and completions[0] == completions[1]:
            # Different texts, same tokens: an EOS written out in one completion, or
            # characters the vocabulary cannot encode (SmolLM2 drops bytes 0x04, 0xf1 ...).
            chunk.cut_errors.append(DataError(index, "rejected", "identical to chosen",
                                              "the same tokens after tokenization"))
            continue
        report.completions_truncated += sum(len(ids) > budget for ids in completions)
        cut = [ids[:budget] for ids in completions]
        if label is None and cut[0] == cut[1]:
            report.dropped_identical += 1
            continue
        chunk.halves.append(half)
        if label is None:
            chunk.pairs.append(TokenizedPair(index, prompt, cut[0], cut[1]))
        else:
            chunk.pairs.append(TokenizedPair(index, prompt, cut[0], [], label=bool(label)))
            chunk.full.append(completions[0])
            chunk.budgets.append(budget)


def settle(errors: list[DataError], skip_bad_rows: bool, report: DataReport) -> None:
    """Raise the earliest bad row, or count them all when skipping."""
    if errors and not skip_bad_rows:
        raise min(errors, key=lambda error: error.row)
    for error in errors:
        report.record(error)
    errors.clear()


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # What a fast tokenizer's __call__ runs, without building the attention masks and
        # dicts it returns (a third of the time on short rows) or offsets nobody reads.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _cut_left(ids: list[int], limit: int, keep_first: bool) -> list[int]:
    if keep_first:
        return ids[:1] + ids[len(ids) - (limit - 1):] if limit > 1 else ids[:1]
    return ids[len(ids) - limit:]


def describe(layout: str, kinds: set) -> str:
    name = {"implicit": "implicit prompt"}.get(layout, layout)
    return ", ".join([name] + sorted(kinds))


class _Specials:
    """BOS once at the start of the prompt, only for tokenizers that add it themselves
    (SmolLM2 does not); EOS once at the end of each completion."""

    def __init__(self, tokenizer):
        self.bos = tokenizer.bos_token_id
        probe = tokenizer("a")["input_ids"]
        self.adds_bos = self.bos is not None and len(probe) > 0 and probe[0] == self.bos
        self.eos, self.eos_text = tokenizer.eos_token_id, tokenizer.eos_token
        if self.eos is None:
            raise ConfigError("the tokenizer has no eos_token; completions must end with one")

    def starts(self, ids: list[int]) -> bool:
        return self.adds_bos and bool(ids) and ids[0] == self.bos

    def with_bos(self, ids: list[int]) -> list[int]:
        return ids if not self.adds_bos or self.starts(ids) else [self.bos] + ids

    def with_eos(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[-1] == self.eos else ids + [self.eos]


class _Renderer:
    """Texts for one row: strings pass through; message lists go through the chat template."""

    def __init__(self, tokenizer, chat_template: Optional[str], eos_text: str):
        if chat_template and "{" not in chat_template and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text()
        self.tokenizer, self.template, self.eos_text = tokenizer, chat_template, eos_text

    def render(self, index: int, row: Row) -> tuple[str, list[str]]:
        if isinstance(row, PreferenceRow):
            completions = {"chosen": row.chosen, "rejected": row.rejected}
        else:
            completions = {"completion": row.completion}
        if not row.conversational:
            return row.prompt, list(completions.values())
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("conversational data needs a chat template and the tokenizer "
                             "has none: set chat_template")
        prompt = self._apply(index, "prompt", row.prompt, add_generation_prompt=True)
        texts = []
        for name, messages in completions.items():
            full = self._apply(index, name, row.prompt + messages)
            if not full.startswith(prompt):
                raise DataError(index, name, "chat template mismatch", "the rendered prompt "
                                "is not a prefix of the rendered prompt + completion")
            text = full[len(prompt):]
            # Templates append text after the end-of-turn token (SmolLM2: "<|im_end|>\n");
            # cutting there makes EOS the completion's last token, exactly once.
            end = text.rfind(self.eos_text) if self.eos_text else -1
            texts.append(text[:end + len(self.eos_text)] if end >= 0 else text)
        return prompt, texts

    def _apply(self, index: int, field: str, messages: list[dict], **kwargs) -> str:
        if self.template is not None:
            kwargs["chat_template"] = self.template
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except TemplateError as error:
            raise DataError(index, field, "chat template error", str(error)) from error
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            # A template's own code fails on this row (``content`` not a string where
            # it concatenates, a missing key): the row's error, named, not a traceback.
            raise DataError(index, field, "chat template error",
                            f"{type(error).__name__}: {error}") from error
