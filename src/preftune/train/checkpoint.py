"""Checkpoints (resumable training state) and the final Hugging Face export.

A checkpoint is written in a staging folder and renamed into place once complete. The last
file written there is ``manifest.json``: the size and sha256 of every other file, each
synced to disk before it. ``--resume`` takes the newest ``checkpoint-N`` whose files all
match their manifest (:func:`find_resumable`), so neither a half-written checkpoint nor one
damaged since is resumed from. A write that fails (a full disk) removes its staging folder,
leaves the earlier checkpoints as they were and stops the run on every process
(:class:`CheckpointWriteFailed`, exit code 4).

Everything is read back without unpickling code: weights from safetensors, optimizer,
scheduler and RNG states through ``torch.load(weights_only=True)``; a file holding more
than tensors is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError

from preftune.errors import CheckpointWriteFailed, ConfigError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "lr_scheduler.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
HASH_BLOCK_BYTES = 4 * 1024 * 1024
GIB = 1024 ** 3
# The command line's exit status when a checkpoint could not be written (cli.py returns
# a TrainingStopped's exit_code).
WRITE_FAILED_EXIT_CODE = 4
# What a full disk or a file-size limit raises while a checkpoint is written: OSError from
# Python's own writes, RuntimeError from torch.save's zip writer ("[enforce fail at
# inline_container.cc:...]"), SafetensorError from the weights file.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
# Crash tests set this to hold a checkpoint write open (seconds) between its files and its
# rename, so that a kill lands inside the write for certain.
WRITE_DELAY_ENV = "PREFTUNE_CHECKPOINT_WRITE_DELAY"
# And this to hold a verification open (seconds) after its first file is hashed, so that a
# kill lands inside the verification of a resume.
VERIFY_DELAY_ENV = "PREFTUNE_VERIFY_DELAY"


def _numbered(output_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder, oldest first, complete or not."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints holding a ``trainer_state.json``, oldest first
    (no checksums read: cheap enough for pruning and reports)."""
    return [(step, folder) for step, folder in _numbered(output_dir)
            if (folder / STATE_FILE).is_file()]


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest checkpoint with a ``trainer_state.json``, files unchecked (a resume
    uses :func:`find_resumable`, which checks them)."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


# -- the manifest --------------------------------------------------------------------


def _digest(handle) -> tuple[int, str]:
    """(bytes, sha256 hex) of an open binary file, read in blocks: a checkpoint of a large
    model does not fit in memory twice."""
    digest, size = hashlib.sha256(), 0
    while block := handle.read(HASH_BLOCK_BYTES):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once the folder holding it is synced (power loss, not kills).
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> dict:
    """Syncs every file of ``folder`` to disk while hashing it, then writes and syncs
    ``manifest.json`` last: a manifest on disk implies the files it lists are too.
    Returns the manifest."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST_FILE:
            continue
        with path.open("rb") as handle:
            size, sha256 = _digest(handle)
            os.fsync(handle.fileno())
        files[name] = {"bytes": size, "sha256": sha256}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    with (folder / MANIFEST_FILE).open("w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(folder)
    return manifest


class _Unverified(Exception):
    """Why a checkpoint does not match its manifest (a short reason naming the file)."""


def _manifest_entries(folder: Path) -> list[tuple[str, dict]]:
    """The manifest's ``(file, {"bytes", "sha256"})`` entries, sorted by file name."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise _Unverified(f"no {MANIFEST_FILE} (incomplete or not written by preftune)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        entries = sorted((str(name), {"bytes": int(e["bytes"]), "sha256": str(e["sha256"])})
                         for name, e in files.items())
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise _Unverified(f"{MANIFEST_FILE} does not parse ({type(error).__name__})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _Unverified(f"{MANIFEST_FILE} has format {manifest.get('format')!r}; this "
                          f"preftune reads format {MANIFEST_FORMAT}")
    for name, _ in entries:
        # A manifest names files inside its own folder; anything else is not ours.
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise _Unverified(f"{MANIFEST_FILE} names a file outside the checkpoint: {name}")
    return entries


def _check_file(path: Path, name: str, entry: dict, checksums: bool) -> None:
    """Raises _Unverified when ``path`` is missing or differs from its manifest entry."""
    if not path.is_file():
        raise _Unverified(f"{name}: missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise _Unverified(f"{name}: {size} bytes, manifest says {entry['bytes']}")
    if checksums:
        with path.open("rb") as handle:
            if _digest(handle)[1] != entry["sha256"]:
                raise _Unverified(f"{name}: checksum differs")


def verify_checkpoint(folder: Path, checksums: bool = True) -> Optional[str]:
    """None when ``manifest.json`` parses and every file it lists exists with its size and
    (``checksums``) its sha256; otherwise a short reason naming the file, e.g.
    ``"optimizer.bin: checksum differs"``. Without ``checksums`` only sizes are compared:
    that catches a truncated write without reading the whole checkpoint."""
    delay = float(os.environ.get(VERIFY_DELAY_ENV) or 0)
    try:
        for index, (name, entry) in enumerate(_manifest_entries(folder)):
            _check_file(folder / name, name, entry, checksums)
            if index == 0 and checksums and delay:
                time.sleep(delay)
    except _Unverified as reason:
        return str(reason)
    return None


def find_resumable(output_dir: Path, log: Callable[[str], None]) -> Optional[Path]:
    """The newest ``checkpoint-N`` that verifies (:func:`verify_checkpoint`), or None. Each
    newer one that does not is logged with its reason, e.g. ``"skipping checkpoint-6:
    optimizer.bin: checksum differs; resuming from checkpoint-4"``."""
    skipped = []
    for _, folder in reversed(_numbered(output_dir)):
        reason = verify_checkpoint(folder)
        if reason is None:
            for name, why in skipped:
                log(f"skipping {name}: {why}; resuming from {folder.name}")
            return folder
        skipped.append((folder.name, reason))
    for name, why in skipped:
        log(f"skipping {name}: {why}; no earlier checkpoint verifies")
    return None


def _newest_intact(output_dir: Path) -> Optional[Path]:
    """The newest checkpoint whose files have their manifest's sizes. Sizes only: this runs
    when a write has just failed, and hashing a large checkpoint then would hold every
    process for minutes; a full disk truncates, which sizes catch."""
    for _, folder in reversed(_numbered(output_dir)):
        if verify_checkpoint(folder, checksums=False) is None:
            return folder
    return None


# -- writing ---------------------------------------------------------------------------


def _attempt(write: Callable, *args) -> Optional[BaseException]:
    """Runs one part of a checkpoint write; the error it raised, if it is one a full disk
    or a failing device raises, else None."""
    try:
        write(*args)
    except WRITE_ERRORS as error:
        return error
    return None


def _first_line(error: BaseException) -> str:
    """``"Type: first line"``: torch's errors run to many lines of C++ context."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _failure_on_any_rank(accelerator, error: Optional[BaseException]) -> Optional[str]:
    """The first line of the first error on any process, or None when none failed. Every
    process calls it at the same point of a write: it is also the write's barrier, so no
    process waits for one that has given up."""
    if accelerator.num_processes == 1:
        return None if error is None else _first_line(error)
    failed = accelerator.reduce(torch.tensor(int(error is not None),
                                             device=accelerator.device), "sum")
    if not int(failed.item()):
        return None
    from accelerate.utils import gather_object

    # Only after a failure: every process learns what failed where.
    lines = gather_object([None if error is None else
                           f"process {accelerator.process_index}: {_first_line(error)}"])
    return next(line for line in lines if line)


def _free_gib(path: Path) -> float:
    """Free space on the filesystem holding ``path``, or its nearest existing parent (the
    output folder may be what could not be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / GIB


def _write_failed(final: Path, reason: str) -> CheckpointWriteFailed:
    """The error every process raises: what failed, the free space, where to resume."""
    intact = _newest_intact(final.parent)
    advice = (f"{intact.name} is intact; free space and run again with --resume" if intact
              else "no earlier checkpoint is intact; free space and run again")
    return CheckpointWriteFailed(
        f"could not write {final}: {reason}; {_free_gib(final.parent):.2f} GiB free on its "
        f"filesystem; {advice}", WRITE_FAILED_EXIT_CODE, intact)


def _stop_if_failed(accelerator, error: Optional[BaseException], final: Path,
                    staging: Path) -> None:
    """Raises :class:`CheckpointWriteFailed` on every process when any one failed, after
    the main process removed the staging folder."""
    reason = _failure_on_any_rank(accelerator, error)
    if reason is None:
        return
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    raise _write_failed(final, reason)


def _make_staging(staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)


def _complete_staging(staging: Path, state: dict, scheduler,
                      model_files: Optional[Callable[[Path], None]] = None) -> None:
    """The main process's part after accelerate's files: the schedule, the model-folder
    files, our state, then the manifest, last (it covers them all)."""
    if scheduler is not None:
        torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
    if model_files is not None:
        model_files(staging)
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    write_manifest(staging)
    if os.environ.get(WRITE_DELAY_ENV):
        time.sleep(float(os.environ[WRITE_DELAY_ENV]))


def _complete_and_publish(staging: Path, final: Path, state: dict, scheduler,
                          keep: Optional[int], model_files) -> None:
    """The main process's part once every rank has written its files."""
    _complete_staging(staging, state, scheduler, model_files)
    _publish(staging, final, keep)


def _publish(staging: Path, final: Path, keep: Optional[int]) -> None:
    """Renames the complete staging folder into place, then drops checkpoints beyond
    ``keep``."""
    output_dir = final.parent
    if final.exists():
        # Only when re-saving a step (a resumed run may); move the old one out of the
        # checkpoint-N namespace first, so a kill here leaves the staging copy behind,
        # never a half-deleted checkpoint-N.
        stale = final.with_name(f".{final.name}.old")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(staging, final)
    _fsync_dir(output_dir)
    if keep:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            # Out of the namespace first for the same reason.
            doomed = old.with_name(f".{old.name}.old")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict,
                    scheduler=None, keep: Optional[int] = None,
                    model_files: Optional[Callable[[Path], None]] = None) -> Path:
    """Model, optimizer and RNG state (through accelerate), the learning-rate schedule,
    ``model_files(folder)`` (what makes the checkpoint a model folder: final_save.py), our
    own state and the manifest, in a staging folder renamed to ``checkpoint-{step}``. The
    schedule is not registered with accelerate: accelerate pickles registered objects and
    unpickles them with ``weights_only=False``.

    A write that fails on any process raises :class:`CheckpointWriteFailed` on all of
    them, with the staging folder removed and earlier checkpoints untouched."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".checkpoint-{step}.tmp"
    main = accelerator.is_main_process
    # Each agreement is also a barrier. Here: accelerate creates the folder on the main
    # process only, and another rank writing its RNG state there first would find none.
    error = _attempt(_make_staging, staging) if main else None
    _stop_if_failed(accelerator, error, final, staging)
    error = _attempt(accelerator.save_state, str(staging))
    # Here: every rank's files are complete before the manifest hashes them.
    _stop_if_failed(accelerator, error, final, staging)
    error = _attempt(_complete_and_publish, staging, final, state, scheduler, keep,
                     model_files) if main else None
    _stop_if_failed(accelerator, error, final, staging)
    return final


def remove_partial(output_dir: Path) -> list[str]:
    """Leftovers of writes a kill interrupted (``.checkpoint-N.tmp``, ``.checkpoint-N.old``);
    none of them is ever resumed from. Returns their names."""
    found = [p for p in output_dir.glob(".checkpoint-*") if p.is_dir()] \
        if output_dir.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in found)


@contextlib.contextmanager
def _tensors_only(checkpoint: Path, what: str):
    """Turns torch's refusal to unpickle an object (whose text advises ``weights_only=False``)
    into a ConfigError that gives no such advice."""
    try:
        yield
    except pickle.UnpicklingError:
        raise ConfigError(f"{checkpoint}: {what} holds objects other than tensors; preftune "
                          "loads checkpoints as tensors only and will not unpickle arbitrary "
                          "objects (a checkpoint not written by preftune, or altered since)"
                          ) from None


def _check_rng_state(accelerator, checkpoint: Path) -> None:
    """Reads this process's RNG file as accelerate will. accelerate swallows any error
    there and goes on with other random states, so a file holding more than tensors
    would pass unnoticed and the resumed run would silently draw other numbers."""
    from accelerate.utils import RNG_STATE_NAME, load

    path = checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"
    if path.is_file():
        with _tensors_only(checkpoint, path.name):
            load(path)  # torch.load, weights_only, with numpy's RNG types allowed


def load_checkpoint(accelerator, checkpoint: Path, scheduler=None) -> dict:
    """Restores model, optimizer, RNG and schedule from ``checkpoint``; returns our state.
    Raises ConfigError for any file that only loads by unpickling arbitrary objects."""
    pickles = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        # accelerate would unpickle these with weights_only=False: arbitrary code.
        raise ConfigError(f"{checkpoint} holds {', '.join(pickles)}, which only loads by "
                          "unpickling arbitrary objects; preftune does not load it (a "
                          "checkpoint from an older preftune, or not from preftune)")
    _check_rng_state(accelerator, checkpoint)
    # Model weights come from safetensors; the optimizer state is the torch.load here.
    with _tensors_only(checkpoint, "the optimizer state (or model state) accelerate loads"):
        accelerator.load_state(str(checkpoint))
    if scheduler is not None:
        with _tensors_only(checkpoint, SCHEDULER_FILE):
            state = torch.load(checkpoint / SCHEDULER_FILE, weights_only=True)
        scheduler.load_state_dict(state)
    return json.loads((checkpoint / STATE_FILE).read_text())


MODEL_CARD = """---
library_name: transformers
tags:
- preftune
- {method}
{base_model_line}---

# {name}

Fine-tuned {from_base}with preftune, objective **{method}**.

| setting | value |
|---|---|
{rows}

Objective: {paper}

    {equation}

Load it with:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```
"""


def write_model_card(folder: Path, *, method, base_model: str, settings: dict,
                     final_metrics: dict, model_dir: Optional[Path] = None) -> None:
    """``folder/README.md``, naming ``model_dir`` (default: ``folder``), the folder the
    model ends up in when it is written elsewhere first."""
    shown = model_dir or folder
    rows = [f"| {k} | {v} |" for k, v in settings.items() if v is not None]
    rows += [f"| final {k} | {v:.4g} |" for k, v in sorted(final_metrics.items())
             if isinstance(v, float)]
    (folder / "README.md").write_text(MODEL_CARD.format(
        method=method.objective.name, name=shown.name,
        # A model built in memory has no name to cite.
        base_model_line=f"base_model: {base_model}\n" if base_model else "",
        from_base=f"from `{base_model}` " if base_model else "",
        rows="\n".join(rows), paper=method.objective.paper,
        equation=method.objective.equation, path=str(shown)))
