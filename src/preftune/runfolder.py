"""A run owns its output folder: one run at a time (a lock), and a new run does not mix
its checkpoints, log and model into another run's, nor write into the model or data it
reads.

On the main process, before anything loads:

    with RunLock(output_dir) as lock:
        if lock.stale:
            log(lock.stale)
        claim_output_dir(output_dir, resume=..., overwrite=..., inputs=..., log=log)
        ...  # train

The lock comes first, so that two runs started together cannot both judge the folder
free, nor one delete what the other is writing.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional

from preftune.errors import ConfigError

LOCK_FILE = ".preftune.lock"
# The lock this process holds on each folder (lock file's real path -> RunLock).
_HELD: dict = {}

# What a run leaves: checkpoints, rounds of iterative training, and files written when a
# run starts (metrics.jsonl, run_info.json) or ends (the rest). trainer_state.json at the
# top is what a Hugging Face Trainer run leaves.
RUN_FOLDER = re.compile(r"^(checkpoint|round)-\d+$")
RUN_FILES = ("preftune_config.yaml", "final_metrics.json", "metrics.jsonl", "run_info.json",
             "trainer_state.json")
# Written by the final save (model.save_pretrained, tokenizer.save_pretrained, the model
# card); a new run would overwrite them, so they are another run's only beside its marks.
SAVED_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "adapter_config.json", "adapter_model.safetensors", "special_tokens_map.json",
               "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
               "chat_template.jinja", "README.md")
SAVED_PATTERNS = (re.compile(r"^model.*\.safetensors$"), re.compile(r"^tokenizer.*\.json$"))
# Leftovers of interrupted writes (checkpoints, the final save's staging folder, JsonlLog's
# rewrite) and the TensorBoard folder (trackers.py): removed on overwrite, no sign of a run
# by themselves.
LEFTOVER = re.compile(r"^\.checkpoint-.*$|^\.final\.tmp$|^metrics\.jsonl\.tmp$|^runs$")
CARD_TAG = "- preftune"


# -- one run at a time -----------------------------------------------------------------

class RunLock:
    """``output_dir/.preftune.lock``, held for the run's lifetime.

    The file records who holds it (pid, host, start time, command); an ``flock`` on it,
    kept while the file stays open, says whether that holder still runs. The kernel drops
    the flock when the process dies, even by SIGKILL, so a file left behind by a killed run
    is found stale and taken over; ``stale`` then holds a line for the log."""

    def __init__(self, output_dir) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.stale: Optional[str] = None
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Optional[str]:
        """Take the lock (making ``output_dir`` if needed); returns ``stale``. Raises
        :class:`ConfigError` naming the holder when another live run has it.

        Within one process a newer lock on the folder takes the older one's over: a
        notebook that builds a second Trainer on a folder, the first never trained or
        dropped, is one user working in turn, not two runs."""
        if self._fd is not None:
            return self.stale
        self.path.parent.mkdir(parents=True, exist_ok=True)
        older = _HELD.get(self._key())
        handed_over = older is not None and older.held
        if handed_over:
            fd, older._fd = older._fd, None
        else:
            fd = self._open_locked()
        try:
            previous = None if handed_over else _read_owner(fd)
            self.stale = _stale_note(previous) if previous is not None else None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_this_process()).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD[self._key()] = self
        return self.stale

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def _open_locked(self) -> int:
        """An fd on the lock file with its flock held. The holder before us unlinks the
        file before closing it: if we locked that unlinked file, the next run would create
        and lock a new one, and both would run; so the lock counts only on the file that
        is still at the path, else try again."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise ConfigError(f"output_dir {self.path.parent} is in use by another "
                                  f"preftune run ({_describe(owner)}); wait for it to end "
                                  "or use another output_dir") from None
            if _same_file(fd, self.path):
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file, if it is still ours, then let go of the flock."""
        if self._fd is None:
            return
        if _HELD.get(self._key()) is self:
            del _HELD[self._key()]
        try:
            # Unlinked while the flock is held, so nobody can lock the file on its way out.
            if _same_file(self._fd, self.path):
                self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = None


def _this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv)}


def _read_owner(fd: int) -> Optional[dict]:
    """What the lock file records; None for an empty file (a new one, or a holder that has
    not written yet), ``{}`` for one that cannot be read."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    try:
        owner = json.loads(os.pread(fd, size, 0))
    except (ValueError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: Optional[dict]) -> str:
    """``pid 123 on host h, started 2025-01-01T10:00:00+00:00: preftune train ...``."""
    if not owner:
        return "its pid not recorded yet" if owner is None else "an unreadable lock file"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')}: {owner.get('command', '?')}")


def _stale_note(owner: dict) -> str:
    note = f"took over a stale lock of {_describe(owner)}"
    host = owner.get("host")
    if host and host != socket.gethostname():
        note += (f"; it names another host ({host}), and on a network filesystem flock may "
                 "not reach across hosts: make sure that run has ended")
    return note


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


# -- what the folder holds ---------------------------------------------------------------

def claim_output_dir(output_dir, *, resume: bool, overwrite: bool,
                     inputs: Mapping[str, Optional[str]],
                     log: Callable[[str], None] = print) -> None:
    """Check, on the main process and before anything loads, that this run may write into
    ``output_dir``; with ``overwrite``, first remove what an earlier run left there.

    ``inputs``: setting name -> path or hub id of what the run reads (model, reference,
    tokenizer, data). Refused: an ``output_dir`` that is one of those folders or inside
    one, and a new run (not ``resume``) in a folder holding another run's checkpoints,
    rounds, log or model, unless ``overwrite``; and files of the user's own that the final
    save would overwrite (a README.md that is not a preftune model card, model or tokenizer
    files with no run beside them). A missing or empty folder, or one with other files of
    the user's, is fine. ``resume`` deletes nothing (the trainer checks the checkpoint
    against the run)."""
    out = Path(output_dir)
    if resume and overwrite:
        raise ConfigError("resume and overwrite_output_dir contradict each other: continue "
                          "the run in output_dir, or delete it, not both")
    _refuse_input_folders(out, inputs)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder")
    if resume or not out.is_dir():
        return
    found = previous_run(out)
    if found and not overwrite:
        raise ConfigError(f"output_dir {out} holds another run ({', '.join(found)}): continue "
                          "it with --resume true, or start over with --overwrite_output_dir "
                          "true (which deletes that run's checkpoints, log and model)")
    _refuse_foreign_saves(out, run_found=bool(found))
    if not found:
        return
    doomed = run_artifacts(out)
    _refuse_deleting_inputs(out, doomed, inputs)
    for path in doomed:
        _remove(path)
    log(f"overwrite_output_dir: removed {', '.join(p.name for p in doomed)} from {out}")


def _refuse_input_folders(out: Path, inputs: Mapping[str, Optional[str]]) -> None:
    """A final save into a model folder would replace its weights; checkpoints in a data
    folder would be read as data. A file input counts only if output_dir is that file or
    under it (a folder beside a data file is no harm to it)."""
    target = out.expanduser().resolve()
    for name, where in _local_inputs(inputs):
        if target == where or where in target.parents:
            relation = "is" if target == where else "lies inside"
            raise ConfigError(f"output_dir {out} {relation} {name} ({where}); the run would "
                              f"write its checkpoints and model there: use another output_dir")


def _local_inputs(inputs: Mapping[str, Optional[str]]) -> list[tuple[str, Path]]:
    """(setting, resolved path) of the inputs that exist here; hub ids do not."""
    found = []
    for name, value in inputs.items():
        if value:
            path = Path(value).expanduser()
            if path.exists():
                found.append((name, path.resolve()))
    return found


def previous_run(out: Path) -> list[str]:
    """Names of the marks another preftune run left in ``out`` (checkpoints, rounds, its
    log and final files, a preftune model card), in natural order."""
    found = [child.name for child in out.iterdir()
             if (RUN_FOLDER.match(child.name) and child.is_dir())
             or child.name in RUN_FILES
             or (child.name == "README.md" and _is_model_card(child))]
    return sorted(found, key=_natural)


def run_artifacts(out: Path) -> list[Path]:
    """Everything of a preftune run in ``out``: its marks, the files of its final save,
    interrupted writes and TensorBoard logs. A README.md that is not a preftune model card
    and files of any other name stay."""
    doomed = []
    for child in out.iterdir():
        name = child.name
        if name == "README.md":
            if _is_model_card(child):
                doomed.append(child)
        elif ((RUN_FOLDER.match(name) and child.is_dir()) or name in RUN_FILES
              or _is_saved_file(name) or LEFTOVER.match(name)):
            doomed.append(child)
    return sorted(doomed, key=lambda p: _natural(p.name))


def _refuse_foreign_saves(out: Path, run_found: bool) -> None:
    """Files of the names the final save writes that no preftune run wrote are the user's
    own: a README.md that is not a model card, and model or tokenizer files with no run
    beside them. The final save would overwrite them, and ``overwrite_output_dir`` deletes
    only a run's own files, so the run stops before it starts."""
    clobbered = sorted(
        child.name for child in out.iterdir()
        if (child.name == "README.md" and not _is_model_card(child))
        or (not run_found and _is_saved_file(child.name)))
    if clobbered:
        raise ConfigError(f"output_dir {out} holds {', '.join(clobbered)}, not written by a "
                          "preftune run; the final save would overwrite them: move them or "
                          "use another output_dir")


def _refuse_deleting_inputs(out: Path, doomed: list[Path],
                            inputs: Mapping[str, Optional[str]]) -> None:
    """A run may read what an earlier one left in the folder (``round-2`` as its model);
    starting over must not delete it."""
    for name, where in _local_inputs(inputs):
        for path in doomed:
            held = path.resolve()
            if where == held or held in where.parents:
                raise ConfigError(f"--overwrite_output_dir would delete {path.name} from {out}, "
                                  f"which {name} reads ({where}); copy it elsewhere first")


def _is_saved_file(name: str) -> bool:
    return (name in SAVED_FILES and name != "README.md"
            or any(pattern.match(name) for pattern in SAVED_PATTERNS))


def _is_model_card(path: Path) -> bool:
    """The card checkpoint.write_model_card writes: its tags list ``- preftune``."""
    if not path.is_file():
        return False
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return CARD_TAG in (line.strip() for line in lines)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _natural(name: str) -> tuple[str, int]:
    """``checkpoint-2`` before ``checkpoint-10``."""
    match = re.match(r"^(.*?)(\d+)$", name)
    return (match.group(1), int(match.group(2))) if match else (name, -1)
