"""Tokenized pairs on disk: an Arrow file read through a memory map, one pair built on demand.

A Python list of :class:`TokenizedPair` costs about 36 bytes per token id (a pointer plus
an int object) in every process. Here the ids are int32 columns of an Arrow IPC stream
file (the format ``datasets`` caches in; ``datasets.Dataset.from_file`` opens it), mapped
into memory: pages are shared between the processes of a node and by the page cache, and
only the pairs a batch reads are turned into lists. The rest of the pipeline reads pairs
by index, so :class:`TokenizedPairs` is a sequence and nothing downstream changes.

Columns, one row per example in the order written: ``row`` (the source row), ``half`` (1
for the rejected half of a paired row split for KTO), ``prompt_ids``, ``chosen_ids``,
``rejected_ids``, ``label`` (-1 paired, 0/1 unpaired) and ``budget``. Unpaired examples
keep their uncut completion in ``chosen_ids`` and their completion budget: their
``rejected_ids`` (KTO's mismatched completion) is the next example's completion cut to
that budget, which :func:`~preftune.data.tokenize.tokenize_rows` builds the same way.
"""

from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from preftune.data.tokenize import Chunk, DataReport
from preftune.types import TokenizedPair

PAIRS_FILE, META_FILE, FINGERPRINT_FILE = "pairs.arrow", "meta.json", "fingerprint.txt"
IDS = pa.list_(pa.int32())
SCHEMA = pa.schema([("row", pa.int64()), ("half", pa.int8()), ("prompt_ids", IDS),
                    ("chosen_ids", IDS), ("rejected_ids", IDS), ("label", pa.int8()),
                    ("budget", pa.int32())])


def chunk_batch(chunk: Chunk) -> pa.RecordBatch:
    """A chunk's examples as one Arrow record batch (column layout: module docstring)."""
    pairs = chunk.pairs
    unpaired = any(p.label is not None for p in pairs)
    columns = [[p.example_id for p in pairs], chunk.halves, [p.prompt_ids for p in pairs],
               chunk.full if unpaired else [p.chosen_ids for p in pairs],
               [p.rejected_ids for p in pairs],
               [-1 if p.label is None else int(p.label) for p in pairs],
               chunk.budgets if unpaired else [0] * len(pairs)]
    arrays = [_ids(c) if f.type == IDS else pa.array(c, f.type)
              for c, f in zip(columns, SCHEMA)]
    return pa.record_batch(arrays, schema=SCHEMA)


def _ids(lists: list) -> pa.Array:
    """A list<int32> column from Python lists, through one flat numpy array (a few times
    faster than pyarrow's conversion of nested lists)."""
    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=IDS)


class StoreWriter:
    """Writes record batches to ``folder`` one at a time: memory stays one batch deep."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.folder / PAIRS_FILE), "wb")
        self._writer = pa.ipc.new_stream(self._sink, SCHEMA)
        self.examples = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.examples += batch.num_rows

    def close(self, report: DataReport, key: str) -> None:
        """Ends the file and records what the reader needs and the report to print."""
        self._writer.close()
        self._sink.close()
        meta = {"key": key, "rows_in": report.rows_in, "report": report_to_dict(report)}
        (self.folder / META_FILE).write_text(json.dumps(meta))


def report_to_dict(report: DataReport) -> dict:
    return {"rows_in": report.rows_in, "pairs_out": report.pairs_out,
            "skipped": dict(report.skipped), "skipped_examples": report.skipped_examples,
            "dropped_too_long": report.dropped_too_long,
            "dropped_identical": report.dropped_identical,
            "prompts_truncated": report.prompts_truncated,
            "completions_truncated": report.completions_truncated,
            "data_format": report.data_format}


def report_from_dict(values: dict) -> DataReport:
    from collections import Counter

    report = DataReport(**{k: v for k, v in values.items() if k != "skipped"})
    report.skipped = Counter(values["skipped"])
    return report


class _Batch:
    """Zero-copy numpy views of one record batch's columns (they point into the map)."""

    def __init__(self, batch: pa.RecordBatch):
        def ids(name: str) -> tuple[np.ndarray, np.ndarray]:
            column = batch.column(name)
            return (column.offsets.to_numpy(), column.values.to_numpy())

        self.row = batch.column("row").to_numpy()
        self.half = batch.column("half").to_numpy()
        self.label = batch.column("label").to_numpy()
        self.budget = batch.column("budget").to_numpy()
        self.prompt, self.chosen, self.rejected = (ids("prompt_ids"), ids("chosen_ids"),
                                                   ids("rejected_ids"))

    @staticmethod
    def take(column: tuple[np.ndarray, np.ndarray], j: int) -> list[int]:
        offsets, values = column
        return values[offsets[j]:offsets[j + 1]].tolist()

    def lengths(self, name: str) -> np.ndarray:
        return np.diff(getattr(self, name)[0]).astype(np.int64)


class TokenizedPairs(Sequence):
    """The pairs of one store folder, as a read-only sequence of :class:`TokenizedPair`.

    Example order and ``example_id`` are those :func:`tokenize_rows` gives the same rows:
    row order, and for paired rows split for KTO all chosen halves first, the rejected
    half of row i numbered ``rows_in + i``. ``lengths`` holds every pair's
    ``num_tokens`` (what length-grouped batching sorts by) without building any pair."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        meta = json.loads((self.folder / META_FILE).read_text())
        self.key, self.rows_in = meta["key"], meta["rows_in"]
        self.report = report_from_dict(meta["report"])
        # Kept referenced: the table's buffers point into this map.
        self._map = pa.memory_map(str(self.folder / PAIRS_FILE))
        self._table = pa.ipc.open_stream(self._map).read_all()
        self._batches = [_Batch(b) for b in self._table.to_batches()]
        self._starts = np.cumsum([0] + [b.num_rows for b in self._table.to_batches()])
        self._order = self._example_order()
        labels = self._column("label")
        self.unpaired = bool(len(labels) and labels[0] >= 0)
        self.lengths = self._token_counts()

    def __reduce__(self):
        return (TokenizedPairs, (str(self.folder),))

    def pairs_fingerprint(self) -> str:
        """reference.cache's fingerprint of these pairs (what a checkpoint and the reference
        cache are keyed by), computed once per store and kept beside it: the pairs of a
        store never change."""
        from preftune.reference.cache import digest_pairs

        kept = self.folder / FINGERPRINT_FILE
        if kept.is_file():
            return kept.read_text()
        value = digest_pairs(self)
        staging = kept.with_suffix(f".{os.getpid()}.tmp")
        try:
            staging.write_text(value)
            staging.replace(kept)
        except OSError:  # a read-only cache: the value is still right, just not kept
            pass
        return value

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._pair(i) for i in range(*index.indices(len(self)))]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} of {len(self)}")
        return self._pair(index % len(self))

    def __iter__(self) -> Iterator[TokenizedPair]:
        return (self._pair(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TokenizedPairs({len(self)} pairs in {self.folder})"

    def _locate(self, position: int) -> tuple[_Batch, int]:
        stored = position if self._order is None else int(self._order[position])
        b = int(np.searchsorted(self._starts, stored, side="right")) - 1
        return self._batches[b], stored - int(self._starts[b])

    def _pair(self, i: int) -> TokenizedPair:
        batch, j = self._locate(i)
        row = int(batch.row[j]) + int(batch.half[j]) * self.rows_in
        prompt = batch.take(batch.prompt, j)
        label = int(batch.label[j])
        if label < 0:
            return TokenizedPair(row, prompt, batch.take(batch.chosen, j),
                                 batch.take(batch.rejected, j))
        budget = int(batch.budget[j])
        neighbour, k = self._locate((i + 1) % len(self))
        return TokenizedPair(row, prompt, batch.take(batch.chosen, j)[:budget],
                             batch.take(neighbour.chosen, k)[:budget], label=bool(label))

    def _column(self, name: str) -> np.ndarray:
        parts = [getattr(b, name) for b in self._batches]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _example_order(self) -> Optional[np.ndarray]:
        """Stored position of each example in order; None when stored in order (a KTO
        split writes each chunk's chosen halves, then its rejected ones)."""
        halves = self._column("half")
        if not halves.any():
            return None
        ids = self._column("row") + halves.astype(np.int64) * self.rows_in
        return np.argsort(ids, kind="stable")

    def _token_counts(self) -> np.ndarray:
        def lengths(name: str) -> np.ndarray:
            parts = [b.lengths(name) for b in self._batches]
            values = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            return values if self._order is None else values[self._order]

        prompt, chosen, rejected = lengths("prompt"), lengths("chosen"), lengths("rejected")
        if len(self) and self.unpaired:
            budget = self._column("budget").astype(np.int64)
            budget = budget if self._order is None else budget[self._order]
            rejected = np.minimum(np.roll(chosen, -1), budget)
            chosen = np.minimum(chosen, budget)
        return prompt + chosen + rejected


def pair_lengths(pairs: Sequence[TokenizedPair]) -> Sequence[int]:
    """Every pair's ``num_tokens``: from the store's column, or pair by pair for a list."""
    if isinstance(pairs, TokenizedPairs):
        return pairs.lengths.tolist()
    return [p.num_tokens for p in pairs]


class ChainedPairs(Sequence):
    """Two sequences of pairs read as one, without copying either (train + eval pairs for
    the reference cache)."""

    def __init__(self, first: Sequence[TokenizedPair], second: Sequence[TokenizedPair]):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} of {len(self)}")
        n = len(self.first)
        return self.first[index] if index < n else self.second[index - n]

    def __iter__(self) -> Iterator[TokenizedPair]:
        yield from self.first
        yield from self.second
