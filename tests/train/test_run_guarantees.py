"""The guarantees of docs/guarantees.md held end to end: real ``python -m preftune.cli
train`` processes on the tiny model of crash_helpers.py, one test (or two) for each:

1. float16 weights are refused before loading; a step that breaks the weights with no
   checkpoint behind it stops the run (exit 3) and saves nothing.
2. A new run in another run's folder stops, leaving it untouched, unless told to resume
   (which checks the settings) or to overwrite.
3. ``--resume`` refuses changed settings and lists them; ``--resume_force`` applies them
   and records them.
4. A second run on a folder in use is refused, naming the first, which ends as if alone.
5. An ``output_dir`` that is the model folder or inside it is refused.
6. Checkpoints are on by default (by time, at the last step; by epoch when asked).
7. SIGINT/SIGTERM during the final evaluation or the final save end resumable or whole.
8. A checkpoint write that fails (a file-size limit) stops with exit 4, keeping the
   earlier checkpoint.
9. A damaged newest checkpoint is named and skipped; the run resumes from an intact one.
10. A "billion laughs" recipe is refused at once.
11. A pickle payload in a checkpoint is refused; the JSON files stay strict JSON with
    non-finite numbers; skipped steps are bounded in total, not only in a row.

The runs share one data file and most share one uninterrupted reference run (6 steps, 6
held-out pairs evaluated at the end); a process costs 2-6 s, mostly start-up.
"""

import json
import math
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from crash_helpers import (assert_same_run, final_weights, launch, logged_steps, losses,
                           plain_args, run, strict_json, tiny_run_files, tree, wait_until,
                           word_tokenizer)
from preftune.train.checkpoint import WRITE_FAILED_EXIT_CODE, write_manifest
from preftune.train.guard import EXIT_CODE as NONFINITE_EXIT_CODE
from preftune.train.metrics import read_jsonl
from preftune.train.pauses import EVAL_DELAY_ENV, FINAL_SAVE_DELAY_ENV

STEPS = 6


def run_args(model_dir: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """The reference run's settings: 18 training pairs (9 steps an epoch), 6 held out and
    evaluated one per batch (so an evaluation has 6 moments to be interrupted in); later
    options override earlier ones."""
    return [*plain_args(model_dir, data, output_dir, STEPS), "--eval_fraction", "0.25",
            "--per_device_eval_batch_size", "1", *extra]


def checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(model folder, data file, folder holding them): the tiny tied Llama and 24 pairs."""
    folder = tmp_path_factory.mktemp("guarantees")
    model_dir, data = tiny_run_files(folder)
    return model_dir, data, folder


@pytest.fixture(scope="module")
def untied_model(files):
    """Another model folder: untied embeddings, so a batch leaves the rows of tokens it
    does not use with a gradient of exactly 0 (AdamW with eps 0 divides 0 by 0 there)."""
    from tiny import tiny_llama

    folder = files[2] / "untied-model"
    tiny_llama(vocab_size=64, layers=1, hidden=32, tie=False).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(files):
    """The uninterrupted run every resumed one is compared with. A checkpoint every
    1e-6 minutes (every step: a step takes far longer than 60 us), all kept: the folders
    other tests start from (finding 6 checks them)."""
    model_dir, data, folder = files
    out = folder / "reference"
    code, output = run(run_args(model_dir, data, out, "--save_minutes", "1e-6",
                                "--save_total_limit", "null"))
    assert code == 0, output
    return out, output


@pytest.fixture
def processes():
    """Processes a test starts; any still running when it ends (a failed assertion) are
    killed, so none outlives its test holding a core."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()


def start(processes, args, env=None):
    process = launch(args, env)
    processes.append(process)
    return process


# -- 1. float16 and a step that breaks the weights ----------------------------------------

def test_1_float16_weights_are_refused_before_anything_loads(files, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "fp16"
    code, output = run(run_args(model_dir, data, out, "--torch_dtype", "float16"))
    assert code == 2, output
    assert "torch_dtype float16" in output and "loss scaling" in output
    assert "fp16: true" in output and "bfloat16" in output
    assert not out.exists()  # refused before the folder was claimed or the model loaded


def test_1_adam_epsilon_rounding_to_zero_stops_with_exit_3_and_writes_no_model(
        files, untied_model, tmp_path):
    _, data, _ = files
    out = tmp_path / "eps0"
    # 1e-50 is positive but 0 in float32 (below its smallest subnormal, 1.4e-45): AdamW
    # then divides 0 by 0. A checkpoint after every step: the broken step 1 must not
    # become one.
    code, output = run(run_args(untied_model, data, out, "--adam_epsilon", "1e-50",
                                "--save_steps", "1"))
    assert code == NONFINITE_EXIT_CODE, output
    assert "step 1 left non-finite values in the weights" in output
    assert "no checkpoint holds an earlier state, and this one is not saved" in output
    assert checkpoint_steps(out) == []
    from safetensors.torch import load_file

    saved = list(out.rglob("*.safetensors"))
    assert all(torch.isfinite(t).all() for path in saved for t in load_file(path).values())
    assert saved == []  # no model at all: the only state it had was broken


# -- 2. another run's folder --------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_run(files):
    """Another run: DPO over 2 epochs of 9 steps, a checkpoint at each epoch's end, all
    kept (finding 6 checks the steps)."""
    model_dir, data, folder = files
    out = folder / "dpo"
    code, output = run(run_args(model_dir, data, out, "--method", "dpo", "--max_steps", "-1",
                                "--num_train_epochs", "2", "--save_strategy", "epoch",
                                "--save_total_limit", "null"))
    assert code == 0, output
    return out, output


def test_2_a_new_run_in_another_runs_folder_stops_unless_resumed_or_overwritten(
        files, dpo_run, reference, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "used"
    shutil.copytree(dpo_run[0], out)
    before = tree(out)

    code, output = run(run_args(model_dir, data, out))
    assert code == 2, output
    assert "holds another run" in output
    assert "checkpoint-9" in output and "checkpoint-18" in output
    assert "--resume true" in output and "--overwrite_output_dir true" in output
    assert tree(out) == before

    # The DPO run's checkpoint-18 lies past this run's 6 steps, under another objective.
    code, output = run(run_args(model_dir, data, out, "--resume"))
    assert code == 2, output
    assert "checkpoint-18 was written by a run with other settings" in output
    assert "method: 'dpo' -> 'simpo'" in output and "max_steps: -1 -> 6" in output
    assert tree(out) == before

    code, output = run(run_args(model_dir, data, out, "--overwrite_output_dir", "true"))
    assert code == 0, output
    assert "overwrite_output_dir: removed" in output
    assert checkpoint_steps(out) == [STEPS]  # checkpoint-9 and checkpoint-18 are gone
    # Nothing of the DPO run is left in the log (its 18 steps) or the weights.
    assert_same_run(out, reference[0])


# -- 3. resuming with other settings -----------------------------------------------------

def test_3_resume_lists_changed_settings_and_resume_force_applies_them(
        files, untied_model, reference, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "changed"
    out.mkdir()
    shutil.copytree(reference[0] / "checkpoint-3", out / "checkpoint-3")
    shutil.copy(reference[0] / "metrics.jsonl", out / "metrics.jsonl")
    before = tree(out)

    code, output = run(run_args(untied_model, data, out, "--resume", "--learning_rate", "5e-3",
                                "--method", "dpo"))
    assert code == 2, output
    assert "checkpoint-3 was written by a run with other settings" in output
    assert "learning_rate: 0.01 -> 0.005" in output
    assert "method: 'simpo' -> 'dpo'" in output
    assert f"model_name_or_path: '{model_dir}' -> '{untied_model}'" in output
    assert "--resume_force true" in output
    assert tree(out) == before

    code, output = run(run_args(model_dir, data, out, "--resume", "--resume_force", "true",
                                "--learning_rate", "5e-3"))
    assert code == 0, output
    assert "--resume_force: from this step on the run takes the new values: " \
           "learning_rate: 0.01 -> 0.005" in output
    # Cosine schedule, 2 warmup steps (ceil(0.2 x 6)), logged after each step s at
    # base x f(s): f(1) = 1/2, f(2) = 1, then f(s) = (1 + cos(pi (s - 2) / 4)) / 2.
    # Steps 1-3 ran at base 0.01, steps 4-6 at the new 0.005.
    def f(s):
        return s / 2 if s < 2 else (1 + math.cos(math.pi * (s - 2) / 4)) / 2

    expected = {s: (0.01 if s <= 3 else 0.005) * f(s) for s in range(1, STEPS + 1)}
    assert expected[4] == pytest.approx(0.0025) and expected[6] == pytest.approx(0.0)
    logged = {r["step"]: r["learning_rate"] for r in read_jsonl(out / "metrics.jsonl")
              if "learning_rate" in r}
    assert logged == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # The record of what ran says so.
    config = yaml.safe_load((out / "preftune_config.yaml").read_text())
    assert config["training"]["learning_rate"] == 0.005
    forced = [{"step": 3, "changes": ["learning_rate: 0.01 -> 0.005"]}]
    assert json.loads((out / "run_info.json").read_text())["resumes_forced"] == forced
    card = (out / "README.md").read_text()
    assert "| learning_rate | 0.005 |" in card
    assert "| resumed at step 3 with changes | learning_rate: 0.01 -> 0.005 |" in card


# -- 4. two runs on one folder -----------------------------------------------------------

@pytest.fixture(scope="module")
def busy_folder(files, tmp_path_factory):
    """A run with no checkpoint options (finding 6 reads its folder), and, while it holds
    the folder mid-run, a second run told to overwrite it. SIGSTOP keeps the first inside
    its run (and its lock) for as long as the second takes; SIGCONT lets it finish.
    (first's folder, first's exit code and output, second's exit code and output, pid)."""
    model_dir, data, _ = files
    out = tmp_path_factory.mktemp("busy") / "run"
    first = launch(run_args(model_dir, data, out))
    try:
        assert wait_until(lambda: logged_steps(out) >= 1, first)
        first.send_signal(signal.SIGSTOP)
        assert (out / ".preftune.lock").is_file()  # stopped while it holds the folder
        second = run(run_args(model_dir, data, out, "--overwrite_output_dir", "true"))
    finally:
        first.send_signal(signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    return out, (first.returncode, output), second, first.pid


def test_4_a_second_run_on_a_folder_in_use_is_refused_naming_the_first(busy_folder,
                                                                        reference):
    out, (first_code, first_output), (code, output), pid = busy_folder
    assert code == 2, output
    assert f"is in use by another preftune run (pid {pid} on host" in output
    assert first_code == 0, first_output
    assert_same_run(out, reference[0])
    assert [step for step, _ in losses(out)] == list(range(1, STEPS + 1))  # once each
    assert not (out / ".preftune.lock").exists()


# -- 5. the model folder as output_dir ----------------------------------------------------

@pytest.fixture(scope="module")
def model_folder_runs(files, tmp_path_factory):
    """A copy of the model folder, its contents before, and two runs (together: neither
    gets past its folder check) whose output_dir is that folder and a folder inside it."""
    model_dir, data, _ = files
    model = tmp_path_factory.mktemp("inputs") / "model"
    shutil.copytree(model_dir, model)
    before = tree(model)
    runs = [launch(run_args(model, data, target)) for target in (model, model / "run")]
    results = [(process.wait(timeout=300), process.stdout.read()) for process in runs]
    return model, before, results


def test_5_output_dir_in_the_model_folder_is_refused_and_its_files_stay(model_folder_runs):
    model, before, [(code, output), (inside_code, inside_output)] = model_folder_runs
    assert code == 2, output
    assert f"output_dir {model} is model_name_or_path" in output
    assert inside_code == 2, inside_output
    assert f"output_dir {model / 'run'} lies inside model_name_or_path" in inside_output
    files_now = {name: data for name, data in tree(model).items() if data is not None}
    assert files_now == {name: data for name, data in before.items() if data is not None}


def test_5_a_refused_output_dir_inside_the_model_folder_is_not_created(model_folder_runs):
    model, before, _ = model_folder_runs
    assert tree(model) == before  # folders too: nothing made there


# -- 6. checkpoints by default ------------------------------------------------------------

def test_6_checkpoints_are_written_by_default_by_time_and_by_epoch(busy_folder, reference,
                                                                   dpo_run):
    # No checkpoint option: by time (30 min) and at the last step, so the 6 steps give one.
    out, (_, output), _, _ = busy_folder
    assert (f"checkpoints: every 30 min, at the last step, in {out}/checkpoint-N; keeping "
            "the newest 2") in output
    assert checkpoint_steps(out) == [STEPS]
    # save_minutes 1e-6: after every step.
    out, output = reference
    assert f"checkpoints: every 1e-06 min, at the last step, in {out}/checkpoint-N; " \
           "keeping all" in output
    assert checkpoint_steps(out) == list(range(1, STEPS + 1))
    # save_strategy epoch, 2 epochs of 9 steps.
    out, output = dpo_run
    assert "checkpoints: every 9 steps, every 30 min, at the last step" in output
    assert checkpoint_steps(out) == [9, 18]


def test_6_sigkill_after_the_last_steps_checkpoint_then_resume_ends_as_uninterrupted(
        files, reference, tmp_path, processes):
    model_dir, data, _ = files
    out = tmp_path / "killed"
    args = run_args(model_dir, data, out)  # no checkpoint options
    # Held in the final evaluation, which follows the last step's checkpoint.
    process = start(processes, args, {EVAL_DELAY_ENV: "60"})
    assert wait_until(lambda: checkpoint_steps(out) == [STEPS], process)
    time.sleep(0.3)
    process.kill()
    process.communicate()
    assert not (out / "model.safetensors").exists() and not (out / ".final.tmp").exists()
    code, output = run(args + ["--resume"])
    assert code == 0, output
    assert f"resumed from {out / f'checkpoint-{STEPS}'} at step {STEPS}" in output
    assert_same_run(out, reference[0])


# -- 7. stop signals in the final evaluation and the final save ----------------------------

@pytest.fixture(scope="module")
def stopped_in_evaluation(files):
    """A run stopped by SIGINT in its final evaluation, then resumed: (folder, the stopped
    run's exit code and output, whether it left final_metrics.json, the resumed run's exit
    code and output)."""
    model_dir, data, folder = files
    out = folder / "stopped"
    args = run_args(model_dir, data, out)
    # 1 s after each of the 6 evaluation batches; the signal lands in the first pause (or
    # before the first batch) and is read before the next batch.
    process = launch(args, {EVAL_DELAY_ENV: "1"})
    try:
        assert wait_until(lambda: checkpoint_steps(out) == [STEPS], process)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    stopped = (process.returncode, output)
    final_metrics_after_stop = (out / "final_metrics.json").exists()
    return out, stopped, final_metrics_after_stop, run(args + ["--resume"])


def test_7_a_stop_during_the_final_evaluation_keeps_the_step_and_resume_finishes(
        stopped_in_evaluation, reference):
    out, (code, output), final_metrics_after_stop, (resumed_code, resumed_output) = \
        stopped_in_evaluation
    assert code == 130, output
    assert (f"stopped by signal 2 during the evaluation after step {STEPS} of {STEPS}; "
            f"state saved in {out / f'checkpoint-{STEPS}'}; continue with --resume") in output
    assert "Traceback" not in output
    assert not final_metrics_after_stop

    assert resumed_code == 0, resumed_output
    assert_same_run(out, reference[0])
    # The final evaluation ran on the same weights and pairs.
    evaluated = {k: v for k, v in json.loads((out / "final_metrics.json").read_text()).items()
                 if k.startswith("eval_")}
    expected = {k: v for k, v in json.loads(
        (reference[0] / "final_metrics.json").read_text()).items() if k.startswith("eval_")}
    assert evaluated == expected and "eval_loss" in expected


def test_7_a_run_resumed_at_its_last_step_records_the_same_final_metrics(
        stopped_in_evaluation, reference):
    out = stopped_in_evaluation[0]
    got = json.loads((out / "final_metrics.json").read_text())
    expected = json.loads((reference[0] / "final_metrics.json").read_text())
    # Throughput is the one figure that depends on the clock.
    got.pop("tokens_per_second", None)
    expected.pop("tokens_per_second")
    assert got == expected


def test_7_the_model_card_names_the_folder_the_model_is_in(reference):
    out = reference[0]
    card = (out / "README.md").read_text()
    assert f"# {out.name}\n" in card
    assert f'AutoModelForCausalLM.from_pretrained("{out}")' in card
    assert ".final.tmp" not in card


def test_7_a_stop_during_the_final_save_completes_it(files, reference, tmp_path, processes):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, data, _ = files
    out = tmp_path / "saving"
    # Held 2 s inside the final save, once the weights and tokenizer are in its staging
    # folder.
    process = start(processes, run_args(model_dir, data, out), {FINAL_SAVE_DELAY_ENV: "2"})
    assert wait_until(lambda: (out / ".final.tmp" / "tokenizer_config.json").is_file(),
                      process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert (f"stopped by signal 15 during the final save, after it completed: the model in "
            f"{out} is whole") in output
    assert not (out / ".final.tmp").exists()
    assert strict_json((out / "final_metrics.json").read_text())["eval_loss"]
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    expected = final_weights(reference[0])
    for name, tensor in model.state_dict().items():
        if name in expected:  # lm_head.weight is tied to the embeddings, saved once
            assert torch.equal(tensor, expected[name]), name


# -- 8. a full disk -----------------------------------------------------------------------

def test_8_a_failed_checkpoint_write_stops_with_exit_4_and_keeps_the_earlier_one(
        files, reference, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "full"
    out.mkdir()
    shutil.copytree(reference[0] / "checkpoint-3", out / "checkpoint-3")
    shutil.copy(reference[0] / "metrics.jsonl", out / "metrics.jsonl")
    before = tree(out / "checkpoint-3")
    # Every checkpoint has the same file sizes: a file-size limit between the weights and
    # the larger optimizer state lets the log and the weights be written and fails the
    # optimizer state of checkpoint-4, every time. (The log and run_info.json are a few
    # kB.)
    weights = (out / "checkpoint-3" / "model.safetensors").stat().st_size
    optimizer = (out / "checkpoint-3" / "optimizer.bin").stat().st_size
    assert weights < optimizer
    limit = (weights + optimizer) // 2

    def limit_file_size():
        # A write past the limit then fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, output = run(run_args(model_dir, data, out, "--resume", "--save_steps", "1"),
                       preexec_fn=limit_file_size)
    assert code == WRITE_FAILED_EXIT_CODE, output
    assert f"could not write {out / 'checkpoint-4'}: " in output
    assert "GiB free on its filesystem; checkpoint-3 is intact; free space and run again " \
           "with --resume" in output
    assert "Traceback" not in output
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-3"]
    assert tree(out / "checkpoint-3") == before


# -- 9. a damaged checkpoint --------------------------------------------------------------

def test_9_resume_names_damaged_checkpoints_and_continues_from_an_intact_one(
        files, reference, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "damaged"
    out.mkdir()
    for step in range(1, STEPS + 1):
        shutil.copytree(reference[0] / f"checkpoint-{step}", out / f"checkpoint-{step}")
    shutil.copy(reference[0] / "metrics.jsonl", out / "metrics.jsonl")
    # One flipped byte in the weights' data (the file still loads), half an optimizer
    # state, a missing schedule.
    weights = out / "checkpoint-6" / "model.safetensors"
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[-100] ^= 0xFF
    weights.write_bytes(bytes(data_bytes))
    optimizer = out / "checkpoint-5" / "optimizer.bin"
    whole = optimizer.read_bytes()
    optimizer.write_bytes(whole[:len(whole) // 2])
    (out / "checkpoint-4" / "lr_scheduler.pt").unlink()

    code, output = run(run_args(model_dir, data, out, "--resume"))
    assert code == 0, output
    assert "skipping checkpoint-6: model.safetensors: checksum differs; resuming from " \
           "checkpoint-3" in output
    assert (f"skipping checkpoint-5: optimizer.bin: {len(whole) // 2} bytes, manifest says "
            f"{len(whole)}; resuming from checkpoint-3") in output
    assert "skipping checkpoint-4: lr_scheduler.pt: missing; resuming from checkpoint-3" \
        in output
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in output
    assert_same_run(out, reference[0])


# -- 10. a YAML bomb ----------------------------------------------------------------------

def test_10_a_billion_laughs_recipe_is_refused_at_once(tmp_path):
    # Each level lists 9 aliases of the one before: 9^8 x 9 "lol"s, 490 million values
    # once expanded, in 341 bytes.
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text("\n".join(lines))
    assert len(bomb.read_bytes()) == 341
    # The same start-up and refusal path without the expansion: its first level alone
    # (an unknown key).
    plain = tmp_path / "plain.yaml"
    plain.write_text(lines[0])

    started = time.monotonic()
    code, output = run(["--config", str(plain)], timeout=60)
    plain_seconds = time.monotonic() - started
    assert code == 2 and "unknown key 'a'" in output, output
    started = time.monotonic()
    code, output = run(["--config", str(bomb)], timeout=60)
    bomb_seconds = time.monotonic() - started
    assert code == 2, output
    assert f"{bomb}: YAML aliases expand to 490,329,064 values, past the limit of " \
           "100,000" in output
    assert bomb_seconds - plain_seconds < 2.0


# -- 11. pickles, strict JSON, skipped steps in total -------------------------------------

class _Payload:
    """Unpickled, it opens (creates) ``marker``: any code could run in its place."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_11_a_pickle_payload_in_a_checkpoint_is_refused_without_unpickling(
        files, reference, tmp_path):
    model_dir, data, _ = files
    out = tmp_path / "payload"
    out.mkdir()
    checkpoint = out / "checkpoint-3"
    shutil.copytree(reference[0] / "checkpoint-3", checkpoint)
    marker = tmp_path / "code-ran"
    torch.save({"state": _Payload(marker)}, checkpoint / "optimizer.bin")
    write_manifest(checkpoint)  # sealed again, as whoever altered it would

    code, output = run(run_args(model_dir, data, out, "--resume"))
    assert code == 2, output
    assert "holds objects other than tensors; preftune loads checkpoints as tensors only " \
           "and will not unpickle arbitrary objects" in output
    assert "weights_only=False" not in output  # torch's own message advises it
    assert not marker.exists()


def gap_rows(folder: Path) -> tuple[Path, Path]:
    """Training rows for R-DPO with rdpo_alpha 1e38: its logit beta h + alpha (n_w - n_l)
    overflows float32 (past 3.4e38) once the chosen and rejected completions differ by 4
    tokens. 4 more in the chosen one: +inf, loss 0 and gradient 0 (a finite step that
    changes nothing); 4 fewer: -inf, an infinite loss. Rows 8 and 9 are the second kind;
    seed 3 puts them into steps 2 and 5 (checked below). The eval file holds one pair of
    each kind: its mean loss is inf."""
    words = "a b c d e f g h i j k l m n o p".split()
    train = folder / "gaps.jsonl"
    with train.open("w") as handle:
        for row in range(12):
            longer, shorter = " ".join(words[row:row + 5]), words[row]
            chosen, rejected = (shorter, longer) if row in (8, 9) else (longer, shorter)
            handle.write(json.dumps({"prompt": "what is the answer", "chosen": chosen,
                                     "rejected": rejected}) + "\n")
    held_out = folder / "gaps-eval.jsonl"
    held_out.write_text(
        json.dumps({"prompt": "hello", "chosen": "yes", "rejected": "a b c d e"}) + "\n"
        + json.dumps({"prompt": "hello", "chosen": "a b c d e", "rejected": "yes"}) + "\n")
    return train, held_out


@pytest.fixture(scope="module")
def gaps(files):
    from preftune.batching.plan import BatchPlan

    train, held_out = gap_rows(files[2])
    plan = BatchPlan(12, 2, seed=3)
    assert [s + 1 for s in range(STEPS) if {8, 9} & set(plan.step_indices(s))] == [2, 5]
    return train, held_out


def gap_args(files, gaps, out: Path, *extra: str) -> list[str]:
    return [*plain_args(files[0], gaps[0], out, STEPS), "--method", "rdpo", "--rdpo_alpha",
            "1e38", "--max_consecutive_nonfinite", "5", *extra]


def test_11_metrics_and_final_metrics_stay_strict_json_with_nonfinite_numbers(
        files, gaps, reference, tmp_path):
    # A normal run's files first.
    strict_json((reference[0] / "final_metrics.json").read_text())
    for line in (reference[0] / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    # Steps 2 and 5 skipped (3 allowed: 0.5 x 6), an infinite evaluation loss.
    out = tmp_path / "nan"
    code, output = run(gap_args(files, gaps, out, "--max_nonfinite_fraction", "0.5",
                                "--eval_dataset", str(gaps[1])))
    assert code == 0, output
    assert "skipped 2 non-finite steps" in output
    rows = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("nonfinite_step_skipped")]
    assert [r["step"] for r in skipped] == [2, 5]
    evaluated = [r for r in rows if "eval_loss" in r]
    assert [(r["step"], r["eval_loss"]) for r in evaluated] == [(STEPS, "inf")]
    final = strict_json((out / "final_metrics.json").read_text())
    assert final["eval_loss"] == "inf"


def test_11_spread_out_skipped_steps_past_the_allowed_share_stop_with_exit_3(
        files, gaps, tmp_path):
    out = tmp_path / "spread"
    # One skipped step allowed in 6 (0.2 x 6, rounded down); steps 2 and 5 are two, never
    # in a row.
    code, output = run(gap_args(files, gaps, out, "--max_nonfinite_fraction", "0.2"))
    assert code == NONFINITE_EXIT_CODE, output
    assert "2 optimizer steps were skipped as non-finite by step 5, more than " \
           "max_nonfinite_fraction allows (1); stopped." in output
    assert f"{out / 'checkpoint-4'} holds the last good state (after step 4)" in output
    skipped = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("nonfinite_step_skipped")]
    assert [(r["step"], r["consecutive_skips"], r["rows"]) for r in skipped] == \
           [(2, 1, [1, 8]), (5, 1, [3, 9])]
    assert checkpoint_steps(out) == [4]
    assert not (out / "model.safetensors").exists()
