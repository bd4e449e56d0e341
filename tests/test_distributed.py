"""Several processes train exactly like one with the same global batch.

Two CPU ranks (gloo) x batch 2 x accumulation 2 against one in-process run of batch 4 x
accumulation 2, 3 steps, same seed: the logged loss at every step, every other logged
metric (rewards, log-probs, lengths, NLL, grad norm) and the final weights are no farther
from a float64 1-process run than a few times the float32 1-process run is
(tests/float64_bounds.py: sharding changes float32 summation orders as another CPU does).
That only holds if the step's example and NLL-token counts are all-reduced
before the loss is formed, the gradient average over ranks is undone, metrics are summed
over ranks before dividing, and SamPO draws its token subsets per example, not per rank.

- cpo-simpo: reference-free, with a token-normalised NLL term;
- sampo: reference-based (a frozen copy of the starting policy), with random
  down-sampling of the longer completion;
- backends: DDP and FSDP2 (accelerate's FSDP2 code paths on CPU; see distributed_worker.py),
  and, where deepspeed is installed, ZeRO-2 and ZeRO-3 launched with the shipped
  configs/accelerate/zero2.yaml and zero3.yaml (DeepSpeed's CPU accelerator, gloo);
- resume: a run started in a new folder holding only the sampo run's step-2 checkpoint
  logs only step 3, the same step 3, and ends with the same weights (from the starting
  weights, without the checkpoint's, step 3's loss would differ).
- TR-DPO (dpo with sync_ref_model, alpha 0.6, an update every 2 of 4 steps, a checkpoint
  every 2): metrics, final weights and the reference after both updates as above; each
  update's reference equals the hand mixture of the previous one and the policy it mixed
  in; a run resumed from the step-2 checkpoint restores the mixed reference (steps 3 and 4
  depend on it) and ends with the same weights and reference. Under FSDP2 the two models'
  DTensor shards are mixed locally, under ZeRO-3 one gathered parameter at a time.
- non-finite steps (DDP and FSDP2): NaN on rank 1 alone during step 2 makes every rank skip
  that step, logged with the rows of both ranks, and the run ends with the weights of a
  1-process run that skips step 2 (DeepSpeed steps its engine inside backward, which the
  guard cannot undo).

All launches start together and overlap the 1-process runs (~1 minute on 2 cores).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distributed_worker import BASE_ARGS
from float64_bounds import assert_no_farther_from_float64, max_diff, ulps_floor
from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.reference.sync import REFERENCE_FILE
from preftune.train.metrics import read_jsonl
from preftune.train.trainer import Trainer

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
STEPS = ["--max_steps", "3"]
PER_RANK = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
ONE_PROCESS = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"]
METHODS = ["cpo-simpo", "sampo"]
# TR-DPO: reference updates after steps 2 and 4, alpha 0.6.
TR_DPO = ["--method", "dpo", "--sync_ref_model", "true", "--ref_model_sync_steps", "2",
          "--ref_model_mixup_alpha", "0.6"]
TR_DPO_STEPS = ["--max_steps", "4"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# backend -> the accelerate config it is launched with (None: torch.distributed.run).
BACKENDS = {"ddp": None, "fsdp2": None}
if HAS_DEEPSPEED:
    BACKENDS.update(zero2=CONFIGS / "zero2.yaml", zero3=CONFIGS / "zero3.yaml")
BACKEND_PARAMS = list(BACKENDS) + ([] if HAS_DEEPSPEED else [pytest.param(
    "zero2/zero3", marks=pytest.mark.skip(reason="deepspeed is not installed"))])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(backend: str, out: Path, tokenizer_dir: Path) -> subprocess.Popen:
    """One 2-rank launch running, in order: each method for 3 steps (sampo saving a
    checkpoint at step 2), then sampo resumed from that checkpoint in a new folder."""
    runs = [{"output_dir": str(out / method), "args": ["--method", method, *STEPS, *PER_RANK]
             + (["--save_steps", "2"] if method == "sampo" else [])} for method in METHODS]
    # The resumed run builds the same starting model, as a real resume reloads
    # model_name_or_path: sampo's reference is a copy of it and is not in the checkpoint.
    if backend in ("ddp", "fsdp2"):
        runs.append({"output_dir": str(out / "nonfinite"), "nan_on_rank": 1, "nan_at_step": 1,
                     "args": ["--method", "cpo-simpo", *STEPS, *PER_RANK]})
    runs.append({"output_dir": str(out / "resumed"),
                 "copy_checkpoint": str(out / "sampo" / "checkpoint-2"),
                 "args": ["--method", "sampo", *STEPS, *PER_RANK, "--save_steps", "2",
                          "--resume"]})
    tr_dpo = [*TR_DPO, *TR_DPO_STEPS, *PER_RANK, "--save_steps", "2"]
    runs += [{"output_dir": str(out / "tr-dpo"), "record_syncs": True, "args": tr_dpo},
             {"output_dir": str(out / "tr-dpo-resumed"), "args": [*tr_dpo, "--resume"],
              "copy_checkpoint": str(out / "tr-dpo" / "checkpoint-2")}]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    port = str(free_port())
    config = BACKENDS[backend]
    if config is None:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", port]
    else:
        launcher = ["-m", "accelerate.commands.launch", "--config_file", str(config),
                    "--num_processes", "2", "--main_process_port", port]
        backend = "launcher"
    command = [sys.executable, *launcher, str(WORKER), "--backend", backend,
               "--tokenizer", str(tokenizer_dir), "--runs", json.dumps(runs)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def launches(tmp_path_factory, tokenizer):
    """Every backend's launch, started at once: they and the 1-process runs overlap."""
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)  # loads in ~0.5 s; "smollm2" takes seconds
    started = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(backend)
        started[backend] = (out, start(backend, out, tokenizer_dir))
    yield started
    for _, process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def launched(request, launches) -> Path:
    out, process = launches[request.param]
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-6000:]
    return out


def one_process_run(out: Path, tokenizer, args: list[str], dtype: torch.dtype,
                    nan_at_step=None, steps=STEPS, reference=False) -> tuple:
    """A 1-process run of the workers' model and data in ``dtype``: (metrics, weights), and
    with ``reference`` the reference model's parameters after the run."""
    config = load_config(None, ["--output_dir", str(out), *BASE_ARGS, *args, *steps,
                                *ONE_PROCESS])
    trainer = Trainer(config, model=tiny_llama(vocab_size=1000).to(dtype), tokenizer=tokenizer,
                      train_pairs=random_pairs(24, vocab=1000), log=lambda *_: None)
    if nan_at_step is not None:
        trainer.model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output * float("nan")
            if trainer.step == nan_at_step else output)
    trainer.train()
    result = (read_jsonl(out / "metrics.jsonl"),
              {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    if reference:
        result += ({n: p.detach().clone()
                    for n, p in trainer.reference.model.named_parameters()},)
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tokenizer, launches):
    """The 1-process runs in float32 and float64: {method: {dtype: (metrics, weights)}}."""
    out = tmp_path_factory.mktemp("one")
    return {method: {dtype: one_process_run(out / f"{method}-{dtype}", tokenizer,
                                            ["--method", method], dtype)
                     for dtype in (torch.float32, torch.float64)}
            for method in METHODS}


@pytest.fixture(scope="module")
def tr_dpo_one_process(tmp_path_factory, tokenizer, launches):
    """The 1-process TR-DPO run in float32 and float64: {dtype: (metrics, weights, reference)}."""
    out = tmp_path_factory.mktemp("one-tr-dpo")
    return {dtype: one_process_run(out / str(dtype), tokenizer, TR_DPO, dtype,
                                   steps=TR_DPO_STEPS, reference=True)
            for dtype in (torch.float32, torch.float64)}


def assert_near_one_process(got: tuple[list[dict], dict], one: dict, what: str) -> None:
    """Metrics at every step and final weights of a multi-rank float32 run: no farther from
    the float64 1-process run than ``FACTOR`` times the float32 1-process run is."""
    (metrics, weights), (metrics32, weights32), (metrics64, weights64) = \
        got, one[torch.float32], one[torch.float64]
    assert [r["step"] for r in metrics] == [r["step"] for r in metrics64], what
    errors, reference_errors, scale = {}, {}, 1.0
    for mine, single, truth in zip(metrics, metrics32, metrics64):
        assert set(mine) == set(truth), what
        for key in sorted(set(truth) - {"tokens_per_second", "rows"}):
            if not isinstance(truth[key], float):
                assert mine[key] == truth[key], (what, mine["step"], key)
                continue
            # Over all steps per metric; the floor at the scale of the largest metric, since
            # a small one (a reward margin) is a difference of larger ones.
            errors[key] = max(errors.get(key, 0.0), abs(mine[key] - truth[key]))
            reference_errors[key] = max(reference_errors.get(key, 0.0),
                                        abs(single[key] - truth[key]))
            scale = max(scale, abs(truth[key]))
    for key in errors:
        assert_no_farther_from_float64(errors[key], reference_errors[key],
                                       ulps_floor(torch.tensor(scale)), f"{what} {key}")
    # A saved model holds a tied head once (under the embedding's name).
    assert weights.keys() <= weights64.keys() and weights, what
    weights32, weights64 = ({k: w[k] for k in weights} for w in (weights32, weights64))
    assert_no_farther_from_float64(max_diff(weights, weights64), max_diff(weights32, weights64),
                                   ulps_floor(weights64), f"{what} weights")


def assert_same_metrics(got: list[dict], expected: list[dict], what: str) -> None:
    """Two runs of one backend on one machine (a resume against the uninterrupted run)."""
    assert [r["step"] for r in got] == [r["step"] for r in expected], what
    for mine, theirs in zip(got, expected):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5), (what, mine["step"])
        assert set(mine) == set(theirs), what
        for key in set(theirs) - {"loss", "tokens_per_second"}:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), \
                (what, mine["step"], key)


def saved_weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(got: dict, expected: dict, what: str) -> None:
    for key, value in got.items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-5), (what, key)


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process(one_process, launched, method):
    out = launched
    got = read_jsonl(out / method / "metrics.jsonl")
    assert len(got) == 3
    # The final export: accelerator.get_state_dict, gathered under FSDP2 and ZeRO-3.
    assert_near_one_process((got, saved_weights(out / method)), one_process[method],
                            f"{out.name} {method}")


def test_resume_from_a_multi_rank_checkpoint(launched):
    out = launched
    uninterrupted = read_jsonl(out / "sampo" / "metrics.jsonl")
    resumed = read_jsonl(out / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [3]  # started at the checkpoint's step
    assert_same_metrics(resumed, uninterrupted[2:], f"{out.name} resume")
    assert_same_weights(saved_weights(out / "resumed"), saved_weights(out / "sampo"),
                        f"{out.name} resume")


def test_a_nonfinite_step_on_one_rank_is_skipped_on_every_rank(launched, tokenizer, tmp_path):
    out = launched / "nonfinite"
    if not out.exists():
        pytest.skip("DeepSpeed steps inside backward; the non-finite guard does not cover it")
    log = read_jsonl(out / "metrics.jsonl")
    (skipped,) = [r for r in log if r.get("nonfinite_step_skipped")]
    assert skipped["step"] == 2 and len(set(skipped["rows"])) == 8  # 2 ranks x 2 x 2
    assert [r["step"] for r in log if "loss" in r] == [1, 3]
    # The same step skipped in one process, in float32 and float64.
    one = {dtype: one_process_run(tmp_path / str(dtype), tokenizer, ["--method", "cpo-simpo"],
                                  dtype, nan_at_step=1)
           for dtype in (torch.float32, torch.float64)}
    one_log = one[torch.float32][0]
    assert sorted(one_log[1]["rows"]) == sorted(skipped["rows"])
    assert_near_one_process((log, saved_weights(out)), one, f"{launched.name} nonfinite")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_and_say_how_to_run_them(path):
    """accelerate reads each config (unknown keys are errors there), and its opening
    comment holds the exact command that uses it."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    command = next(line for line in path.read_text().splitlines() if "accelerate launch" in line)
    assert f"--config_file configs/accelerate/{path.name} -m preftune.cli train --config " \
           "recipes/" in command
    raw = yaml.safe_load(path.read_text())
    if config.distributed_type == "FSDP":
        assert raw["fsdp_config"]["fsdp_version"] == 2
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if config.distributed_type == "DEEPSPEED":
        ds = raw["deepspeed_config"]
        assert ds["gradient_accumulation_steps"] == 1 and ds["zero3_init_flag"] is False
        assert ds["zero_stage"] != 3 or ds["zero3_save_16bit_model"] is True


def test_tr_dpo_two_ranks_equal_one_process(tr_dpo_one_process, launched):
    """Steps 3 and 4 score against the reference mixed after step 2; the final reference
    (the step-4 checkpoint's, after both updates) is held to the bound of the weights."""
    out = launched / "tr-dpo"
    got = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    one = {dtype: run[:2] for dtype, run in tr_dpo_one_process.items()}
    assert_near_one_process((got, saved_weights(out)), one, f"{launched.name} tr-dpo")
    reference = load_file(str(out / "checkpoint-4" / REFERENCE_FILE))
    reference32, reference64 = (tr_dpo_one_process[d][2] for d in (torch.float32, torch.float64))
    assert reference.keys() == reference64.keys()
    assert_no_farther_from_float64(max_diff(reference, reference64),
                                   max_diff(reference32, reference64), ulps_floor(reference64),
                                   f"{launched.name} tr-dpo reference")


def test_tr_dpo_reference_is_the_hand_mixture_after_each_update(launched):
    """reference_2 = 0.6 policy_2 + 0.4 reference_0 and reference_4 = 0.6 policy_4 + 0.4
    reference_2, in float64 from the policy each update mixed in (gathered whole by the
    worker), the previous checkpoint's reference and, for reference_0, the starting model.
    The saved float32 reference is one float32 rounding away from that, inside the floor of
    ``ULPS`` ulps; a missed or misplaced update moves it by 0.6 x the policy's drift since
    the last one, over 100 times the floor (checked, so the test cannot pass vacuously)."""
    out = launched / "tr-dpo"
    previous = {n: p.detach() for n, p in tiny_llama(vocab_size=1000).named_parameters()}
    for step in (2, 4):
        policy = load_file(str(out / f"policy-{step}.safetensors"))
        saved = load_file(str(out / f"checkpoint-{step}" / REFERENCE_FILE))
        assert saved.keys() == previous.keys(), step
        expected = {n: torch.lerp(v.double(), policy[n].double(), 0.6)
                    for n, v in previous.items()}
        floor = ulps_floor(expected)
        assert max_diff(saved, expected) <= floor, (launched.name, step, max_diff(saved, expected))
        assert max_diff(saved, previous) > 100 * floor, (launched.name, step)
        previous = saved


def test_tr_dpo_resume_restores_the_mixed_reference(launched):
    """Resumed from the step-2 checkpoint in a new folder: the starting model's copy would
    be the reference without the checkpoint's mixed one, and step 3 would score otherwise."""
    uninterrupted, resumed = launched / "tr-dpo", launched / "tr-dpo-resumed"
    got = read_jsonl(resumed / "metrics.jsonl")
    assert [r["step"] for r in got] == [3, 4]
    assert_same_metrics(got, read_jsonl(uninterrupted / "metrics.jsonl")[2:],
                        f"{launched.name} tr-dpo resume")
    assert_same_weights(saved_weights(resumed), saved_weights(uninterrupted),
                        f"{launched.name} tr-dpo resume")
    assert_same_weights(load_file(str(resumed / "checkpoint-4" / REFERENCE_FILE)),
                        load_file(str(uninterrupted / "checkpoint-4" / REFERENCE_FILE)),
                        f"{launched.name} tr-dpo resumed reference")
