"""Checkpoint integrity: every checkpoint ends with a manifest of its files' sizes and
sha256; resume takes the newest one that matches it; a file holding more than tensors is
refused without unpickling it; a write that fails (here: a file-size limit, as a full disk
fails it) stops every process cleanly and leaves the earlier checkpoints intact.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2
tests/train/test_checkpoint_integrity.py OUTPUT_DIR``), this file is one rank of the two-process
write-failure test.
"""

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch

from preftune.errors import CheckpointWriteFailed, ConfigError
from preftune.runfolder import LOCK_FILE
from preftune.train.checkpoint import (MANIFEST_FILE, VERIFY_DELAY_ENV, WRITE_FAILED_EXIT_CODE,
                                       find_resumable, load_checkpoint, save_checkpoint,
                                       verify_checkpoint, write_manifest)

# sha256 of b"abc" (FIPS 180-2, appendix B.1) and of no bytes at all.
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
NO_MANIFEST = "no manifest.json (incomplete or not written by preftune)"


def small_checkpoint(folder: Path, files: dict) -> Path:
    """A folder of the given ``{relative path: bytes}`` and its manifest."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    write_manifest(folder)
    return folder


def take_a_step(optimizer) -> None:
    """One AdamW step on gradients of ones: the optimizer state takes its full size."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.ones_like(param)
    optimizer.step()


@contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG, as writes to a full disk fail with
    ENOSPC (SIGXFSZ ignored, or the kernel would kill the process instead)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


# -- the manifest and its verification ------------------------------------------------


def test_manifest_lists_sizes_and_sha256(tmp_path):
    small_checkpoint(tmp_path, {"a.txt": b"abc", "sub/empty.bin": b""})
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == {
        "format": 1,
        "files": {"a.txt": {"bytes": 3, "sha256": SHA256_ABC},
                  "sub/empty.bin": {"bytes": 0, "sha256": SHA256_EMPTY}}}
    assert verify_checkpoint(tmp_path) is None


def test_a_saved_checkpoint_ends_with_a_manifest_of_all_its_files(tmp_path, tokenizer):
    from trainer_helpers import make_trainer

    folder = make_trainer(tmp_path, tokenizer, "--max_steps", "2").save_checkpoint()
    listed = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    on_disk = {p.relative_to(folder).as_posix(): p.stat().st_size
               for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    assert {name: entry["bytes"] for name, entry in listed.items()} == on_disk
    assert {"model.safetensors", "optimizer.bin", "lr_scheduler.pt", "trainer_state.json",
            "random_states_0.pkl"} <= set(listed)
    assert verify_checkpoint(folder) is None


def test_verification_names_what_differs(tmp_path):
    folder = small_checkpoint(tmp_path, {"a.txt": b"abc", "b.txt": b"xyz"})
    (folder / "a.txt").write_bytes(b"ab")
    assert verify_checkpoint(folder) == "a.txt: 2 bytes, manifest says 3"
    (folder / "a.txt").write_bytes(b"abd")  # same size, another byte
    assert verify_checkpoint(folder) == "a.txt: checksum differs"
    assert verify_checkpoint(folder, checksums=False) is None  # sizes only
    (folder / "a.txt").unlink()
    assert verify_checkpoint(folder) == "a.txt: missing"
    (folder / MANIFEST_FILE).write_text('{"format": 1, "files": ')
    assert verify_checkpoint(folder) == "manifest.json does not parse (JSONDecodeError)"
    (folder / MANIFEST_FILE).write_text('{"format": 1, "files": {"../x": '
                                        '{"bytes": 0, "sha256": ""}}}')
    assert verify_checkpoint(folder) == "manifest.json names a file outside the checkpoint: ../x"
    (folder / MANIFEST_FILE).unlink()
    assert verify_checkpoint(folder) == NO_MANIFEST


def test_verification_delay_comes_after_the_first_file(tmp_path, monkeypatch):
    from preftune.train import checkpoint
    folder = small_checkpoint(tmp_path, {"a.txt": b"abc", "b.txt": b"xyz"})
    sleeps = []
    monkeypatch.setattr(checkpoint.time, "sleep", sleeps.append)
    monkeypatch.setenv(VERIFY_DELAY_ENV, "0.5")
    assert verify_checkpoint(folder) is None
    assert sleeps == [0.5]  # once, not once per file


def test_resume_takes_the_newest_checkpoint_that_verifies(tmp_path):
    files = {"optimizer.bin": b"moments", "trainer_state.json": b"{}"}
    for step in (2, 4, 6):
        small_checkpoint(tmp_path / f"checkpoint-{step}", files)
    (tmp_path / "checkpoint-6" / "optimizer.bin").write_bytes(b"MOMENTS")
    (tmp_path / "checkpoint-8").mkdir()  # renamed without a manifest: not preftune's
    lines = []
    assert find_resumable(tmp_path, lines.append) == tmp_path / "checkpoint-4"
    assert lines == [f"skipping checkpoint-8: {NO_MANIFEST}; resuming from checkpoint-4",
                     ("skipping checkpoint-6: optimizer.bin: checksum differs; resuming from "
                      "checkpoint-4")]


def test_resume_finds_nothing_when_no_checkpoint_verifies(tmp_path):
    lines = []
    assert find_resumable(tmp_path / "absent", lines.append) is None
    assert lines == []
    small_checkpoint(tmp_path / "checkpoint-3", {"optimizer.bin": b"moments"})
    (tmp_path / "checkpoint-3" / "optimizer.bin").write_bytes(b"moment")
    assert find_resumable(tmp_path, lines.append) is None
    assert lines == [("skipping checkpoint-3: optimizer.bin: 6 bytes, manifest says 7; no "
                      "earlier checkpoint verifies")]


# -- files that hold more than tensors ------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("name, named", [("lr_scheduler.pt", "lr_scheduler.pt"),
                                         ("random_states_0.pkl", "random_states_0.pkl"),
                                         ("optimizer.bin", "the optimizer state")])
def test_a_file_holding_more_than_tensors_is_refused(tmp_path, tokenizer, name, named):
    from trainer_helpers import make_trainer

    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "2")
    trainer.step = 1
    folder = trainer.save_checkpoint()
    assert load_checkpoint(trainer.accelerator, folder, trainer.scheduler)["step"] == 1
    marker = tmp_path / "code-ran"
    torch.save({"state": Payload(marker)}, folder / name)
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(trainer.accelerator, folder, trainer.scheduler)
    message = str(refused.value)
    assert message.startswith(f"{folder}: {named}")
    assert ("holds objects other than tensors; preftune loads checkpoints as tensors only "
            "and will not unpickle arbitrary objects") in message
    assert "weights_only" not in message
    # `raise ... from None`: torch's advice to retry with weights_only=False is not shown.
    assert refused.value.__suppress_context__ and refused.value.__cause__ is None
    assert not marker.exists()


# -- a write that fails ----------------------------------------------------------------


@pytest.mark.parametrize("failing, error", [
    ("model.safetensors", ("SafetensorError: Error while serializing: I/O error: File too "
                           "large (os error 27)")),
    ("optimizer.bin", "RuntimeError: [enforce fail at inline_container.cc:")])
def test_a_failed_write_stops_and_keeps_the_earlier_checkpoint(tmp_path, tokenizer, failing,
                                                               error):
    """The limit lets every file of the first checkpoint through except ``failing`` (and
    those larger): half the weights file, or between the weights file (float32 weights)
    and the optimizer file (two float32 moments a weight, so about twice as large)."""
    from trainer_helpers import make_trainer

    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "4")
    take_a_step(trainer.optimizer)  # AdamW holds no moments before its first step
    trainer.step = 2
    first = trainer.save_checkpoint()
    weights = (first / "model.safetensors").stat().st_size
    assert (first / "optimizer.bin").stat().st_size > 2 * weights
    trainer.step = 4
    limit = weights // 2 if failing == "model.safetensors" else 3 * weights // 2
    with file_size_limit(limit), pytest.raises(CheckpointWriteFailed) as stopped:
        trainer.save_checkpoint()
    assert stopped.value.exit_code == WRITE_FAILED_EXIT_CODE == 4
    assert stopped.value.checkpoint == first
    message = str(stopped.value)
    assert message.startswith(f"could not write {tmp_path / 'checkpoint-4'}: {error}")
    assert re.search(r"; \d+\.\d\d GiB free on its filesystem; checkpoint-2 is intact; free "
                     r"space and run again with --resume$", message), message
    # Nothing beside it but the lock the trainer holds on its folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "checkpoint-2"]
    assert verify_checkpoint(first) is None
    # Space freed, the next write goes through.
    assert verify_checkpoint(trainer.save_checkpoint()) is None


def test_a_failed_first_write_says_there_is_nothing_to_resume(tmp_path, tokenizer):
    from trainer_helpers import make_trainer

    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "2")
    with file_size_limit(1024), pytest.raises(CheckpointWriteFailed) as stopped:
        trainer.save_checkpoint()
    assert stopped.value.checkpoint is None
    assert str(stopped.value).endswith("; no earlier checkpoint is intact; free space and "
                                       "run again")
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_write_failing_on_one_rank_stops_every_rank(tmp_path):
    """Two gloo ranks; rank 1 alone cannot write its RNG state (about 10 kB, limit 1 kB).
    Both must stop with the same error instead of rank 0 waiting for rank 1 forever."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), __file__, str(run)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        # A file per rank: two processes printing to one pipe can interleave their lines.
        line = (tmp_path / f"rank-{rank}.txt").read_text()
        assert line.startswith(f"exit 4: could not write {run / 'checkpoint-2'}: process 1: "
                               "RuntimeError: [enforce fail at inline_container.cc:"), line
        assert line.endswith("checkpoint-1 is intact; free space and run again with --resume")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]
    assert verify_checkpoint(run / "checkpoint-1") is None


def rank_main(output_dir: Path) -> None:
    """One rank of the test above: a checkpoint that succeeds, then one that fails on
    rank 1."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(8, 8)
    accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    save_checkpoint(accelerator, output_dir, 1, {"step": 1})
    rank = accelerator.process_index
    try:
        with file_size_limit(1024) if rank == 1 else nullcontext():
            save_checkpoint(accelerator, output_dir, 2, {"step": 2})
    except CheckpointWriteFailed as stopped:
        (output_dir.parent / f"rank-{rank}.txt").write_text(f"exit {stopped.exit_code}: "
                                                            f"{stopped}")
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
    # Past this point only teardown is left, where gloo's threads now and then abort the
    # process ("terminate called without an active exception", 1 exit in ~20 here): what
    # this test checks is written above.
    os._exit(0)


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
