"""Normalized rows -> :class:`TokenizedPair`: chat template, BOS/EOS, truncation, a report.

The prompt and each completion are tokenized separately (``add_special_tokens=False``) and
concatenated, so the prompt ids are an exact prefix of every sequence the model sees.
Truncation cuts the prompt from the left first, then the completions from the right, and
never leaves a completion empty: averaging log-probs over zero tokens is 0/0 = NaN.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from jinja2 import TemplateError

from preftune.errors import ConfigError
from preftune.data.formats import (DataError, PreferenceRow, Row, normalize_rows,
                                   pairs_to_unpaired)
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
    beyond what ``max_length`` forces.
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 (a prompt and a completion token), "
                         f"got {max_length}")
    max_prompt_length = max_length - 1 if max_prompt_length is None else max_prompt_length
    if max_prompt_length < 1:
        raise ConfigError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    report = DataReport(rows_in=len(rows))
    if not rows:
        return [], report
    errors: list[DataError] = []
    layout, normalized = normalize_rows(rows, data_format, column_mapping, errors)
    if layout == "unpaired" and not unpaired:
        raise ConfigError("the rows are unpaired (prompt, completion, label): they need an "
                         "unpaired objective such as KTO")
    report.data_format = _describe(layout, [row for _, row in normalized])

    if unpaired and layout != "unpaired":
        indices = [index for index, _ in normalized]
        examples = list(zip(indices + [len(rows) + i for i in indices], indices + indices,
                            pairs_to_unpaired([row for _, row in normalized])))
    else:
        examples = [(index, index, row) for index, row in normalized]

    specials = _Specials(tokenizer)
    rendered = _render(examples, _Renderer(tokenizer, chat_template, specials.eos_text), errors)
    _settle(errors, skip_bad_rows, report)
    pairs, full_completions, budgets = _cut(rendered, tokenizer, specials, max_length,
                                            max_prompt_length, report, errors)
    _settle(errors, skip_bad_rows, report)

    if unpaired:
        # KTO's KL estimate scores a completion under a prompt it does not answer: take the
        # next example's (wrapping around), cut to this prompt's budget.
        for k, pair in enumerate(pairs):
            pair.rejected_ids = full_completions[(k + 1) % len(pairs)][:budgets[k]]
    report.pairs_out = len(pairs)
    return pairs, report


def _render(examples: list, renderer: "_Renderer", errors: list[DataError]) -> list[tuple]:
    """(example_id, row index, prompt text, completion texts, label) per example that
    renders; the others go to ``errors``."""
    rendered = []
    for example_id, index, row in examples:
        try:
            prompt, completions = renderer.render(index, row)
        except DataError as error:
            errors.append(error)
            continue
        rendered.append((example_id, index, prompt, completions, getattr(row, "label", None)))
    return rendered


def _cut(rendered: list[tuple], tokenizer, specials: "_Specials", max_length: int,
         max_prompt_length: int, report: DataReport, errors: list[DataError]
         ) -> tuple[list[TokenizedPair], list[list[int]], list[int]]:
    """Token ids cut to fit: the prompt from the left to ``max_prompt_length``, then the
    completions from the right to what ``max_length`` leaves. Returns the pairs, and for
    unpaired examples their uncut completions and completion budgets."""
    # One batched call per kind of text: fast tokenizers parallelise over the batch.
    prompt_ids = _encode(tokenizer, [r[2] for r in rendered])
    flat = _encode(tokenizer, [text for r in rendered for text in r[3]])
    pairs, full_completions, budgets = [], [], []
    position = 0
    for (example_id, index, _, texts, label), prompt in zip(rendered, prompt_ids):
        completions = [specials.with_eos(ids) for ids in flat[position:position + len(texts)]]
        position += len(texts)
        prompt = specials.with_bos(prompt)
        if not prompt:
            errors.append(DataError(index, "prompt", "empty prompt", "the prompt has no tokens"))
            continue
        if len(prompt) > max_prompt_length:
            prompt = _cut_left(prompt, max_prompt_length, keep_first=specials.starts(prompt))
            report.prompts_truncated += 1
        budget = max_length - len(prompt)
        if budget < 1:
            report.dropped_too_long += 1
            continue
        if label is None and completions[0] == completions[1]:
            # Different texts, same tokens: an EOS written out in one completion, or
            # characters the vocabulary cannot encode (SmolLM2 drops bytes 0x04, 0xf1 ...).
            errors.append(DataError(index, "rejected", "identical to chosen",
                                    "the same tokens after tokenization"))
            continue
        report.completions_truncated += sum(len(ids) > budget for ids in completions)
        cut = [ids[:budget] for ids in completions]
        if label is None and cut[0] == cut[1]:
            report.dropped_identical += 1
            continue
        if label is None:
            pairs.append(TokenizedPair(example_id, prompt, cut[0], cut[1]))
        else:
            pairs.append(TokenizedPair(example_id, prompt, cut[0], [], label=bool(label)))
            full_completions.append(completions[0])
            budgets.append(budget)
    return pairs, full_completions, budgets


def _settle(errors: list[DataError], skip_bad_rows: bool, report: DataReport) -> None:
    """Raise the earliest bad row, or count them all when skipping."""
    if errors and not skip_bad_rows:
        raise min(errors, key=lambda error: error.row)
    for error in errors:
        report.record(error)
    errors.clear()


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _cut_left(ids: list[int], limit: int, keep_first: bool) -> list[int]:
    if keep_first:
        return ids[:1] + ids[len(ids) - (limit - 1):] if limit > 1 else ids[:1]
    return ids[len(ids) - limit:]


def _describe(layout: str, rows: list[Row]) -> str:
    kinds = sorted({"conversational" if row.conversational else "strings" for row in rows})
    name = {"implicit": "implicit prompt"}.get(layout, layout)
    return ", ".join([name] + kinds)


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
