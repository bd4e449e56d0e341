"""Rows -> a cached :class:`~preftune.data.store.TokenizedPairs`: in bounded chunks, in
parallel, once per (rows, tokenizer, settings), by the main process for every rank.

    pairs, report = tokenize_to_store(rows, tokenizer, settings, cache=TokenCache(folder))

Rows are read ``chunk_rows`` at a time, from a list or from any iterable (an
``IterableDataset``, a generator), so the data phase holds a few chunks whatever the row
count; ``num_proc`` worker processes tokenize chunks (fork, in order, at most two per
worker in flight) and the main process writes each result to the Arrow file as it comes.
Each chunk is tokenized exactly as :func:`~preftune.data.tokenize.tokenize_rows`
tokenizes a list (the same :class:`~preftune.data.tokenize.ChunkTokenizer`), row numbers
counted from the source's first row.

Not ``datasets.Dataset.map``: that needs the rows as Arrow columns first, and the rows
users bring are checked row by row *because* they may not fit one column type (a number
where text belongs, a broken line); each such row must end as a ``DataError`` naming it,
not as an Arrow conversion error about the whole file. The output is the Arrow file
``datasets`` would write, memory-mapped the same way.

The cache key hashes the rows (or a key the caller gives for a source it can name, such as
a file's path, size and modification time), the tokenizer (its full vocabulary and merges,
special tokens and chat template), the settings, and the source of the modules that decide
what the pairs are, so any change there is a new key, never a stale hit.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections import deque
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from preftune.data.formats import DETECT_ROWS
from preftune.data.store import TokenizedPairs, StoreWriter, chunk_batch
from preftune.data.tokenize import (ChunkTokenizer, DataReport, TokenizeSettings, describe,
                                    settle)

FORMAT_VERSION = 1
CHUNK_ROWS = 1000
"""Rows per chunk: enough for the tokenizer's batch call to pay off, few enough that a
chunk of 5,000-token conversations stays in the tens of megabytes."""
_CODE = ("formats.py", "tokenize.py", "store.py", "prepare.py")


@dataclasses.dataclass
class TokenCache:
    """Where tokenized pairs are kept: ``folder``, or a temporary folder removed at exit
    (``folder`` None: nothing reused between runs)."""

    folder: Optional[Path] = None

    def root(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="preftune-tokenized-"))
            atexit.register(shutil.rmtree, self.folder, True)
        return Path(self.folder).expanduser()


def default_cache_dir() -> Path:
    """``PREFTUNE_TOKENIZED_CACHE``, else ``tokenized`` in preftune's cache folder."""
    from preftune.model_io import cache_dir

    override = os.environ.get("PREFTUNE_TOKENIZED_CACHE")
    return Path(override).expanduser() if override else cache_dir() / "tokenized"


def tokenize_to_store(rows: Iterable[dict], tokenizer, settings: TokenizeSettings, *,
                      cache: TokenCache, num_proc: Optional[int] = 1,
                      chunk_rows: int = CHUNK_ROWS, rows_key: Optional[str] = None,
                      log: Callable[[str], None] = print) -> tuple[TokenizedPairs, DataReport]:
    """The tokenized pairs of ``rows`` and their report, from the cache when they are in it.

    With several processes the main one tokenizes first; the others then find its store
    (or, if it failed, fail the same way on their own). Rows that are a list are hashed for
    the key up front; other iterables are read once, so only a ``rows_key`` lets a later
    run find their store before reading them."""
    settings = settings.checked()
    if rows_key is None and isinstance(rows, (list, tuple)):
        rows_key = hash_rows(rows)
    key = cache_key(rows_key, tokenizer, settings) if rows_key is not None else None
    with main_process_first():
        folder = cache.root() / key if key else None
        if folder is not None and (folder / "meta.json").is_file():
            pairs = TokenizedPairs(folder)
            log(f"tokenized pairs from cache {folder}")
            return pairs, pairs.report
        return _tokenize(rows, tokenizer, settings, cache.root(), key, num_proc, chunk_rows,
                         log)


def find_store(rows_key: str, tokenizer, settings: TokenizeSettings, cache: TokenCache
               ) -> Optional[TokenizedPairs]:
    """The cached pairs of the rows ``rows_key`` names, if a run before tokenized them."""
    folder = cache.root() / cache_key(rows_key, tokenizer, settings.checked())
    return TokenizedPairs(folder) if (folder / "meta.json").is_file() else None


def _tokenize(rows, tokenizer, settings, root: Path, key: Optional[str], num_proc,
              chunk_rows: int, log) -> tuple[TokenizedPairs, DataReport]:
    """Tokenize into a private folder, then move it to its key's name in one rename: a
    reader never sees half a store, and ranks racing on one key keep the first."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_made(root)))
    try:
        hasher = None if key else RowHasher()
        report = _write(rows, tokenizer, settings, StoreWriter(staging), num_proc or 1,
                        chunk_rows, hasher, key)
        key = key or cache_key(hasher.hexdigest(), tokenizer, settings)
        _place(staging, root / key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"tokenized {report.rows_in} rows into {root / key}")
    return TokenizedPairs(root / key), report


def _write(rows, tokenizer, settings: TokenizeSettings, writer: StoreWriter, num_proc: int,
           chunk_rows: int, hasher, key: Optional[str]) -> DataReport:
    """Every chunk tokenized, its errors settled in row order, its batch written."""
    chunks = _chunks(rows, max(chunk_rows, DETECT_ROWS), hasher)
    first = next(chunks, None)
    report, kinds = DataReport(), set()
    if first is None:
        report.data_format = ""
        writer.close(report, key or "")
        return report
    station = ChunkTokenizer(tokenizer, settings, first[0])
    with contextlib.closing(_results(station, chain([first], chunks), num_proc)) as results:
        for rows_in, result in results:
            report.rows_in += rows_in
            settle(result.render_errors, settings.skip_bad_rows, report)
            settle(result.cut_errors, settings.skip_bad_rows, report)
            report.add_counts(result.report)
            kinds |= result.kinds
            writer.write(result.batch)
    report.data_format = describe(station.layout, kinds)
    report.pairs_out = writer.examples
    writer.close(report, key or "")
    return report


def _chunks(rows: Iterable[dict], size: int, hasher) -> Iterator[tuple[list, int]]:
    """``(rows, index of the first)`` for consecutive chunks; a list is sliced, anything
    else read as it streams (hashed on the way when its key is not known yet)."""
    if isinstance(rows, (list, tuple)):
        for start in range(0, len(rows), size):
            yield list(rows[start:start + size]), start
        return
    iterator, start = iter(rows), 0
    while True:
        block = list(islice(iterator, size))
        if not block:
            return
        if hasher is not None:
            hasher.add(block)
        yield block, start
        start += len(block)


# -- workers ----------------------------------------------------------------------------

_STATION: Optional[ChunkTokenizer] = None  # set before the workers fork; they inherit it


def _work(rows: list, start: int):
    return len(rows), _shippable(_STATION(rows, start))


def _shippable(chunk):
    """The chunk with its pairs as one Arrow batch (cheap to send between processes) and
    its errors as plain data (exceptions with their own ``__init__`` do not unpickle)."""
    chunk.batch = chunk_batch(chunk)
    chunk.pairs, chunk.full = [], []
    chunk.render_errors = [_ErrorBox(e) for e in chunk.render_errors]
    chunk.cut_errors = [_ErrorBox(e) for e in chunk.cut_errors]
    return chunk


class _ErrorBox:
    def __init__(self, error: Exception):
        self.kind, self.args, self.state = type(error), error.args, dict(error.__dict__)

    def open(self) -> Exception:
        error = Exception.__new__(self.kind)
        error.args = self.args
        error.__dict__.update(self.state)
        return error


def _single_threaded() -> None:
    """In each worker: one chunk at a time, without the tokenizer's thread pool. Its
    threads were the parent's and did not survive the fork (with TOKENIZERS_PARALLELISM
    set true the workers would wait on them forever), and would only compete with the
    other workers for the same cores."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _results(station: ChunkTokenizer, chunks, num_proc: int):
    """``(rows in, chunk)`` in chunk order, errors unboxed."""
    # closing: a bad row raised while reading stops the workers now, not at collection.
    with contextlib.closing(_raw_results(station, chunks, num_proc)) as raw:
        for rows_in, chunk in raw:
            chunk.render_errors = [box.open() for box in chunk.render_errors]
            chunk.cut_errors = [box.open() for box in chunk.cut_errors]
            yield rows_in, chunk


def _raw_results(station: ChunkTokenizer, chunks, num_proc: int):
    global _STATION
    _STATION = station
    if num_proc <= 1:
        for rows, start in chunks:
            yield _work(rows, start)
        return
    with multiprocessing.get_context("fork").Pool(num_proc, _single_threaded) as pool:
        pending: deque = deque()
        for rows, start in chunks:
            pending.append(pool.apply_async(_work, (rows, start)))
            if len(pending) >= 2 * num_proc:  # bounded: the rows read ahead stay few
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# -- keys -------------------------------------------------------------------------------

class RowHasher:
    """A digest of rows in fixed blocks, so a list and the same rows streamed in chunks of
    any size hash alike."""

    BLOCK = 1000

    def __init__(self):
        self.digest, self.block = hashlib.blake2b(digest_size=16), []

    def add(self, rows: Iterable) -> "RowHasher":
        for row in rows:
            self.block.append(row)
            if len(self.block) == self.BLOCK:
                self._flush()
        return self

    def hexdigest(self) -> str:
        self._flush()
        return self.digest.hexdigest()

    def _flush(self) -> None:
        if self.block:
            # Pickle is exact (a repr could print two different values alike) and fast.
            self.digest.update(pickle.dumps(self.block, protocol=4))
            self.block = []


def hash_rows(rows: Iterable[dict]) -> str:
    return RowHasher().add(rows).hexdigest()


def cache_key(rows_key: str, tokenizer, settings: TokenizeSettings) -> str:
    here = Path(__file__).parent
    parts = [str(FORMAT_VERSION), rows_key, tokenizer_digest(tokenizer),
             json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str),
             _template_text(settings.chat_template),
             *(hashlib.blake2b((here / name).read_bytes()).hexdigest() for name in _CODE)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """Everything of the tokenizer that can change an id: the fast tokenizer's whole
    definition (vocabulary, merges, normalizer, post-processor), else its vocabulary; its
    special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(
        tokenizer.get_vocab(), sort_keys=True)
    state = json.dumps({"class": type(tokenizer).__name__,
                        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
                        "template": getattr(tokenizer, "chat_template", None),
                        "added": str(getattr(tokenizer, "added_tokens_decoder", ""))},
                       sort_keys=True, default=str)
    return hashlib.blake2b((definition + state).encode(), digest_size=16).hexdigest()


def _template_text(template: Optional[str]) -> str:
    if template and "{" not in template and Path(template).is_file():
        return Path(template).read_text()
    return template or ""


# -- ranks and files --------------------------------------------------------------------

_INSIDE = [0]  # main_process_first blocks entered and not left, in this process


@contextlib.contextmanager
def main_process_first():
    """With several processes launched: the main one runs the body first, the others
    after it (and find its store). The main one releases them even when it fails. A
    block inside another is the outer one's: its barriers are not doubled."""
    state = _accelerate_state()
    if state is None or state.num_processes == 1 or _INSIDE[0]:
        yield
        return
    if not state.is_main_process:
        state.wait_for_everyone()
    _INSIDE[0] += 1
    try:
        yield
    finally:
        _INSIDE[0] -= 1
        if state.is_main_process:
            state.wait_for_everyone()


def _accelerate_state():
    """accelerate's process state once a run has started it, else None (one process)."""
    try:
        from accelerate.state import PartialState
    except ImportError:
        return None
    return PartialState() if PartialState._shared_state else None


def release_freed_memory() -> None:
    """Hands the memory of freed objects (a million rows read whole) back to the system:
    glibc keeps freed small blocks in its arenas, and a training process would otherwise
    carry them, resident, to its end."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
    except OSError:
        if not (target / "meta.json").is_file():  # not another rank's finished store
            raise
