"""A run owns its output folder: the lock (one run at a time, a killed run's lock taken
over) and the claim (no writing into inputs, no mixing with another run's files)."""

import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from preftune.errors import ConfigError
from preftune.runfolder import LOCK_FILE, RunLock, claim_output_dir

HOST = socket.gethostname()
# A second process that takes the lock and holds it until killed.
HOLDER = """
import sys, time
from preftune.runfolder import RunLock
output_dir = sys.argv[1]
sys.argv = ["preftune", "train", "--output_dir", output_dir]
RunLock(output_dir).acquire()
print("locked", flush=True)
time.sleep(600)
"""


# -- the lock ----------------------------------------------------------------------------

def test_lock_records_its_owner_makes_the_folder_and_goes_on_release(tmp_path, monkeypatch):
    out = tmp_path / "not" / "yet"
    monkeypatch.setattr(sys, "argv", ["preftune", "train", "--beta", "0.1"])
    with RunLock(out) as lock:
        owner = json.loads((out / LOCK_FILE).read_text())
        assert lock.stale is None
        assert owner["pid"] == os.getpid() and owner["host"] == HOST
        assert owner["command"] == "preftune train --beta 0.1"
        assert datetime.fromisoformat(owner["started"]).tzinfo is not None
    assert not (out / LOCK_FILE).exists()
    assert out.is_dir()


def test_a_second_lock_in_the_same_process_takes_the_first_over(tmp_path):
    """A notebook building a second Trainer on a folder: the same user, in turn."""
    first = RunLock(tmp_path)
    first.acquire()
    second = RunLock(tmp_path)
    assert second.acquire() is None
    assert second.held and not first.held
    first.release()  # no longer its lock: nothing happens
    assert (tmp_path / LOCK_FILE).exists()
    second.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as refused:
            RunLock(out).acquire()
        message = str(refused.value)
        assert message.startswith(f"output_dir {out} is in use by another preftune run (pid "
                                  f"{holder.pid} on host {HOST}, started ")
        assert message.endswith(f": preftune train --output_dir {out}); wait for it to end "
                                "or use another output_dir")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert (out / LOCK_FILE).exists()
    with RunLock(out) as lock:
        assert lock.stale.startswith(f"took over a stale lock of pid {holder.pid} on host "
                                     f"{HOST}, started ")
        assert lock.stale.endswith(f": preftune train --output_dir {out}")
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": 4242, "host": "elsewhere", "started": "2025-01-01T00:00:00+00:00",
         "command": "preftune train"}))
    with RunLock(tmp_path) as lock:
        assert lock.stale == (
            "took over a stale lock of pid 4242 on host elsewhere, started "
            "2025-01-01T00:00:00+00:00: preftune train; it names another host (elsewhere), "
            "and on a network filesystem flock may not reach across hosts: make sure that "
            "run has ended")


def test_an_unreadable_lock_file_is_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text("{torn")
    lock = RunLock(tmp_path)
    assert lock.acquire() == "took over a stale lock of an unreadable lock file"
    lock.release()


def test_release_leaves_a_lock_file_that_is_no_longer_ours(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    (tmp_path / LOCK_FILE).unlink()
    (tmp_path / LOCK_FILE).write_text('{"pid": 7}')  # another run's, made after ours went
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == '{"pid": 7}'


# -- the claim: inputs -------------------------------------------------------------------

def claim(out, *, resume=False, overwrite=False, log=None, **inputs):
    lines = [] if log is None else log
    claim_output_dir(out, resume=resume, overwrite=overwrite, inputs=inputs,
                     log=lines.append)
    return lines


def test_output_dir_equal_to_the_model_folder_however_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"output_dir m is model_name_or_path "
                                          f"\\({tmp_path / 'm'}\\)"):
        claim("./m", model_name_or_path="m/")
    (tmp_path / "link").symlink_to(tmp_path / "m")
    with pytest.raises(ConfigError, match="is ref_model"):
        claim("link", ref_model=str(tmp_path / "m"))


def test_output_dir_inside_an_input_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match="lies inside dataset_name"):
        claim(data / "run" / "a", dataset_name=str(data))
    (tmp_path / "tok").mkdir()
    with pytest.raises(ConfigError, match="lies inside tokenizer_name_or_path"):
        claim(tmp_path / "tok" / "out", tokenizer_name_or_path=str(tmp_path / "tok"))


def test_a_data_file_counts_only_as_itself(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    claim(data, dataset_name=str(data / "train.jsonl"))  # beside it: its folder is free
    with pytest.raises(ConfigError, match="is eval_dataset"):
        claim(data / "train.jsonl", eval_dataset=str(data / "train.jsonl"))
    with pytest.raises(ConfigError, match="lies inside dataset_name"):
        claim(data / "train.jsonl" / "run", dataset_name=str(data / "train.jsonl"))


def test_names_that_are_not_here_and_neighbours_are_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    claim("org/model", model_name_or_path="org/model")  # a hub id: nothing local
    claim("m2", model_name_or_path="m", ref_model=None)  # "m2" starts with "m", is not in it
    claim(tmp_path, model_name_or_path=str(tmp_path / "m"))  # the input inside output_dir


# -- the claim: another run's files ------------------------------------------------------

def make(folder: Path, *names: str) -> None:
    """Files, or folders for names ending in '/'."""
    for name in names:
        path = folder / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "inside.bin").write_bytes(b"x")
        else:
            path.write_text("x")


CARD = "---\nlibrary_name: transformers\ntags:\n- preftune\n- dpo\n---\n# run\n"


def test_missing_empty_and_unrelated_folders_need_no_flag(tmp_path):
    assert claim(tmp_path / "missing") == []
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty") == []
    make(tmp_path / "mine", "notes.txt", "data/train.jsonl", "checkpoint-notes/", LOCK_FILE)
    assert claim(tmp_path / "mine", overwrite=True) == []
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        LOCK_FILE, "checkpoint-notes", "data", "notes.txt"]


def test_a_new_run_stops_at_another_runs_files_listing_them(tmp_path):
    make(tmp_path, "checkpoint-10/", "checkpoint-2/", "checkpoint-4/", "metrics.jsonl",
         "notes.txt")
    with pytest.raises(ConfigError) as refused:
        claim(tmp_path)
    assert str(refused.value) == (
        f"output_dir {tmp_path} holds another run (checkpoint-2, checkpoint-4, checkpoint-10, "
        "metrics.jsonl): continue it with --resume true, or start over with "
        "--overwrite_output_dir true (which deletes that run's checkpoints, log and model)")
    assert len(list(tmp_path.iterdir())) == 5


@pytest.mark.parametrize("mark", ["preftune_config.yaml", "final_metrics.json", "metrics.jsonl",
                                  "run_info.json", "trainer_state.json", "round-1/",
                                  "checkpoint-3/", "README.md"])
def test_each_mark_of_a_run_stops_a_new_one(tmp_path, mark):
    make(tmp_path, mark)
    if mark == "README.md":
        (tmp_path / mark).write_text(CARD)
    with pytest.raises(ConfigError, match=f"holds another run \\({mark.rstrip('/')}\\)"):
        claim(tmp_path)


def test_resume_deletes_and_refuses_nothing(tmp_path):
    make(tmp_path, "checkpoint-2/", "metrics.jsonl", "config.json")
    assert claim(tmp_path, resume=True) == []
    assert len(list(tmp_path.iterdir())) == 3
    with pytest.raises(ConfigError, match="contradict"):
        claim(tmp_path, resume=True, overwrite=True)


RUN = ["checkpoint-2/", "checkpoint-4/", ".checkpoint-6.tmp/", ".final.tmp/", "round-1/",
       "runs/", "config.json", "generation_config.json", "model.safetensors",
       "model-00001-of-00002.safetensors", "model.safetensors.index.json",
       "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
       "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
       "chat_template.jinja", "preftune_config.yaml", "final_metrics.json",
       "run_info.json", "metrics.jsonl", "metrics.jsonl.tmp", "README.md"]
USER = ["notes.txt", "data/train.jsonl", "checkpoint-notes/", "my_config.json",
        "model.bin.bak"]


def test_overwrite_deletes_exactly_the_runs_files(tmp_path):
    make(tmp_path, *RUN, *USER)
    (tmp_path / "README.md").write_text(CARD)
    log = claim(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-notes", "data", "model.bin.bak", "my_config.json", "notes.txt"]
    assert len(log) == 1
    prefix, suffix = "overwrite_output_dir: removed ", f" from {tmp_path}"
    assert log[0].startswith(prefix) and log[0].endswith(suffix)
    removed = log[0][len(prefix):-len(suffix)].split(", ")
    assert sorted(removed) == sorted(name.rstrip("/") for name in RUN)
    assert removed.index("checkpoint-2") < removed.index("checkpoint-4")


def test_files_the_final_save_would_overwrite_are_the_users_unless_a_run_wrote_them(tmp_path):
    make(tmp_path, "config.json", "model.safetensors", "notes.txt")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=f"output_dir {tmp_path} holds config.json, "
                                              "model.safetensors, not written by a preftune"):
            claim(tmp_path, overwrite=overwrite)
    # A README.md of the user's stays, and stops the run even beside another run's files.
    (tmp_path / "config.json").unlink()
    (tmp_path / "model.safetensors").unlink()
    make(tmp_path, "README.md", "metrics.jsonl")
    with pytest.raises(ConfigError, match="holds README.md, not written by a preftune run"):
        claim(tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").exists()


def test_overwrite_keeps_what_this_run_reads(tmp_path):
    make(tmp_path, "metrics.jsonl", "round-2/")
    with pytest.raises(ConfigError, match="would delete round-2 .* which model_name_or_path "
                                          "reads"):
        claim(tmp_path, overwrite=True, model_name_or_path=str(tmp_path / "round-2"))
    assert (tmp_path / "round-2" / "inside.bin").exists() and (tmp_path / "metrics.jsonl").exists()


def test_output_dir_that_is_a_file(tmp_path):
    make(tmp_path, "out")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim(tmp_path / "out")
