"""Killed runs lose nothing: real ``preftune train`` processes on a tiny model, killed and
resumed, end with the same weights and the same logged losses, bit for bit, as one
uninterrupted run.

- SIGKILL at moments drawn from a seeded RNG during training, and once for certain inside a
  checkpoint write (``PREFTUNE_CHECKPOINT_WRITE_DELAY`` holds the write open); the
  half-written checkpoint is never resumed from.
- SIGKILL after the last step, held for certain inside each moment that follows it: the
  final evaluation (``PREFTUNE_EVAL_DELAY``), the final save (``PREFTUNE_FINAL_SAVE_DELAY``)
  and, in the resume after that, the verification of the checkpoint
  (``PREFTUNE_VERIFY_DELAY``).
- SIGINT and SIGTERM: the run finishes its step, writes a checkpoint and exits with
  128 + the signal number.

``PREFTUNE_CRASH_KILLS`` (default 3) and ``PREFTUNE_CRASH_STEPS`` (default 24) make a
longer campaign: ``PREFTUNE_CRASH_KILLS=40 PREFTUNE_CRASH_STEPS=400 pytest -s ...``. With
``-s`` the module ends with one line counting the kills sent and survived (each followed
by resumes that end bitwise as the uninterrupted run) and the stop signals.
"""

import os
import random
import re
import signal
import time

import pytest

from crash_helpers import (assert_same_run, launch, logged_steps, tiny_run_files, train_args,
                           wait_until)
from preftune.train.checkpoint import VERIFY_DELAY_ENV, WRITE_DELAY_ENV, latest_checkpoint
from preftune.train.pauses import EVAL_DELAY_ENV, FINAL_SAVE_DELAY_ENV

KILLS = int(os.environ.get("PREFTUNE_CRASH_KILLS", "3"))
STEPS = int(os.environ.get("PREFTUNE_CRASH_STEPS", "24"))
# SIGKILLs sent, SIGKILLs whose run was then resumed to the reference's end, stop signals
# (SIGINT, SIGTERM) whose run was too.
TALLY = {"killed": 0, "survived": 0, "stopped": 0}


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    print(f"\nkill campaign: {TALLY['survived']} of {TALLY['killed']} SIGKILLs survived "
          f"(resumed bitwise to the uninterrupted run's end); {TALLY['stopped']} SIGINT/"
          "SIGTERM stops, likewise", flush=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The model, the data and an uninterrupted run to compare with."""
    folder = tmp_path_factory.mktemp("crash")
    model_dir, data = tiny_run_files(folder)
    reference = folder / "reference"
    # Saving checkpoints does not change the numbers; the reference skips them for speed.
    process = launch(train_args(model_dir, data, reference, STEPS) + ["--save_strategy", "no"])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return model_dir, data, reference


def checkpoint_step(output_dir) -> int:
    latest = latest_checkpoint(output_dir)
    return int(latest.name.split("-")[1]) if latest else 0


def finish_and_compare(args, output_dir, reference) -> str:
    process = launch(args + ["--resume"])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert_same_run(output_dir, reference)
    return output


def test_sigkill_anywhere_then_resume_is_bitwise_an_uninterrupted_run(tiny_run, tmp_path):
    model_dir, data, reference = tiny_run
    output_dir = tmp_path / "killed"
    args = train_args(model_dir, data, output_dir, STEPS)
    rng = random.Random(1234)
    kills, partial_step = 0, None
    for attempt in range(KILLS):
        inside_write = attempt == 0
        process = launch(args + ["--resume"], {WRITE_DELAY_ENV: "60"} if inside_write else {})
        if inside_write:
            wait_until(lambda: any(output_dir.glob(".checkpoint-*.tmp/trainer_state.json")),
                       process)
        else:
            # Once this process has trained and saved a step of its own, at a random moment
            # of the steps and checkpoint writes that follow.
            start = checkpoint_step(output_dir)
            wait_until(lambda: checkpoint_step(output_dir) > start, process)
            time.sleep(rng.uniform(0.0, 0.1))
        if process.poll() is not None:
            break  # finished before the kill
        process.kill()
        output, _ = process.communicate()
        kills += 1
        TALLY["killed"] += 1
        print(f"kill {kills}: after step {logged_steps(output_dir)}", flush=True)
        if inside_write:
            # The staging folder is complete but not renamed: it must not be resumed from.
            (partial,) = output_dir.glob(".checkpoint-*.tmp")
            partial_step = int(re.search(r"\d+", partial.name).group())
            latest = latest_checkpoint(output_dir)
            assert latest is None or int(latest.name.split("-")[1]) < partial_step
        elif attempt == 1:
            # The next run cleared the partial write and resumed from the one before.
            assert f"removed incomplete checkpoint writes: .checkpoint-{partial_step}.tmp" \
                in output, output
            assert (f"checkpoint-{partial_step - 1} at step {partial_step - 1}" in output
                    if partial_step > 1 else "no checkpoint" in output), output
    finish_and_compare(args, output_dir, reference)
    TALLY["survived"] += kills
    print(f"\nSIGKILLs survived: {kills}")
    assert kills == KILLS


def test_sigint_and_sigterm_stop_after_a_step_with_a_checkpoint(tiny_run, tmp_path):
    model_dir, data, reference = tiny_run
    output_dir = tmp_path / "stopped"
    args = train_args(model_dir, data, output_dir, STEPS)
    for signum in (signal.SIGINT, signal.SIGTERM):
        process = launch(args + ["--resume"])
        before = logged_steps(output_dir)
        wait_until(lambda: logged_steps(output_dir) > before + 1, process)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, output
        found = re.search(rf"stopped by signal {int(signum)} after step (\d+) of {STEPS}; "
                          r"state saved in (\S+); continue with --resume", output)
        assert found, output
        step = int(found.group(1))
        assert latest_checkpoint(output_dir) == output_dir / f"checkpoint-{step}"
        assert found.group(2) == str(output_dir / f"checkpoint-{step}")
        assert "Traceback" not in output
    finish_and_compare(args, output_dir, reference)
    TALLY["stopped"] += 2


def kill(process) -> str:
    assert process.poll() is None, "the run ended before the kill"
    process.kill()
    TALLY["killed"] += 1
    return process.communicate()[0]


def test_sigkill_in_the_final_evaluation_the_final_save_and_a_resumes_verification(
        tiny_run, tmp_path):
    model_dir, data, reference = tiny_run
    output_dir = tmp_path / "ending"
    # Held-out pairs from a file of their own (the training rows again): the training
    # pairs, and so the reference, stay as they were.
    args = train_args(model_dir, data, output_dir, STEPS) + ["--eval_dataset", str(data)]
    last = output_dir / f"checkpoint-{STEPS}"
    staging = output_dir / ".final.tmp"

    # The last step's checkpoint comes just before the final evaluation, which pauses
    # 60 s after its first batch.
    process = launch(args, {EVAL_DELAY_ENV: "60"})
    assert wait_until(lambda: latest_checkpoint(output_dir) == last, process)
    time.sleep(0.3)
    kill(process)
    assert not staging.exists() and not (output_dir / "final_metrics.json").exists()

    # Resumed at the last step: nothing to train; killed inside the final save, once the
    # weights and tokenizer are in its staging folder (60 s pause there).
    process = launch(args + ["--resume"], {FINAL_SAVE_DELAY_ENV: "60"})
    assert wait_until(lambda: (staging / "tokenizer_config.json").is_file(), process)
    time.sleep(0.3)
    output = kill(process)
    assert f"resumed from {last} at step {STEPS}" in output
    # The staging folder holds the model; output_dir has none yet, not half of one.
    assert (staging / "model.safetensors").is_file()
    assert not (output_dir / "model.safetensors").exists()

    # The next resume removes the staging folder, then verifies checkpoint-STEPS, pausing
    # 60 s after its first file; killed there, before it reports resuming.
    process = launch(args + ["--resume"], {VERIFY_DELAY_ENV: "60"})
    assert wait_until(lambda: not staging.exists(), process)
    time.sleep(0.3)
    output = kill(process)
    assert "removed incomplete checkpoint writes: .final.tmp" in output
    assert "resumed from" not in output

    output = finish_and_compare(args, output_dir, reference)
    assert f"resumed from {last} at step {STEPS}" in output
    assert "skipping" not in output  # no checkpoint was damaged by the kills
    assert (output_dir / "final_metrics.json").is_file()
    TALLY["survived"] += 3
