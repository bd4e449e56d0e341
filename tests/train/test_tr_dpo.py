"""TR-DPO's reference updates (reference/sync.py) in the training loop, the refusals
(validation.py), resume with a mixed reference, and gradient accumulation with the DPOConfig
options on. Two-process runs (DDP, FSDP2, ZeRO-2, ZeRO-3) against one process, the hand
mixture at each update and resume there: tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from tiny import tiny_llama
from trainer_helpers import plain_trainer
from preftune.config import load_config
from preftune.errors import ConfigError
from preftune.train.metrics import MetricWindow, read_jsonl
from preftune.validation import validate

SYNC = ["--method", "dpo", "--sync_ref_model", "true", "--ref_model_sync_steps", "2",
        "--ref_model_mixup_alpha", "0.6", "--per_device_train_batch_size", "4"]


def params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_reference_is_the_hand_computed_mixture_after_each_sync(tmp_path, tokenizer):
    """float64, sync every 2 steps, alpha 0.6: ref_2 = 0.6 pol_2 + 0.4 ref_0 and ref_4 =
    0.6 pol_4 + 0.4 ref_2, by hand from snapshots; steps 1 and 3 leave the reference alone.
    The loop's own hook (train()) gives the same reference, bit for bit."""
    trainer = plain_trainer(tmp_path, tokenizer, *SYNC, "--max_steps", "4",
                            model=tiny_llama(vocab_size=1000).double(), name="manual")
    reference = trainer.reference.model
    expected = params(reference)
    for _ in range(4):
        trainer.train_step(MetricWindow())
        before = params(reference)
        synced = trainer.ref_sync.after_step(trainer.step)
        assert synced == (trainer.step % 2 == 0)
        if synced:
            policy = params(trainer.model)
            expected = {n: 0.6 * policy[n] + 0.4 * expected[n] for n in expected}
        else:
            assert all(torch.equal(before[n], v) for n, v in params(reference).items())
        for name, value in params(reference).items():
            assert torch.allclose(value, expected[name], rtol=1e-15, atol=1e-15), name
    looped = plain_trainer(tmp_path, tokenizer, *SYNC, "--max_steps", "4",
                           model=tiny_llama(vocab_size=1000).double(), name="loop")
    looped.train()
    for name, value in params(looped.reference.model).items():
        assert torch.equal(value, params(reference)[name]), name


def test_resume_restores_the_mixed_reference_bitwise(tmp_path, tokenizer):
    args = [*SYNC, "--max_steps", "6", "--save_steps", "3"]
    full = plain_trainer(tmp_path, tokenizer, *args, name="full")
    full.train()
    cut = plain_trainer(tmp_path, tokenizer, *args, name="cut")
    cut.total_steps = 4  # stops after step 4; the checkpoint of step 3 survives
    cut.train()
    resumed = plain_trainer(tmp_path, tokenizer, *args, "--resume", name="cut",
                            model=tiny_llama(vocab_size=1000, seed=99))
    resumed.train()
    for name, value in params(full.reference.model).items():
        assert torch.equal(value, params(resumed.reference.model)[name]), name
    for name, value in params(full.model).items():
        assert torch.equal(value, params(resumed.model)[name]), name
    losses = [[r["loss"] for r in read_jsonl(tmp_path / n / "metrics.jsonl") if "loss" in r]
              for n in ("full", "cut")]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("extra,key", [
    (["--precompute_ref_log_probs", "true"], "precompute_ref_log_probs"),
    (["--use_peft", "true"], "use_peft"),
    (["--method", "simpo"], "sync_ref_model"),
    (["--ref_model_mixup_alpha", "0"], "ref_model_mixup_alpha"),
    (["--ref_model_sync_steps", "0"], "ref_model_sync_steps"),
])
def test_sync_refusals(tmp_path, extra, key):
    config = load_config(None, ["--output_dir", str(tmp_path), "--dataset_name", "x.jsonl",
                                *SYNC, *extra])
    with pytest.raises(ConfigError, match=key):
        validate(config, loads_data=False, loads_model=False)


def test_sync_refused_at_build_without_a_model_reference(tmp_path, tokenizer):
    """Built in Python past validation, a cached reference is still refused."""
    with pytest.raises(ConfigError, match="sync_ref_model"):
        plain_trainer(tmp_path, tokenizer, *SYNC, "--precompute_ref_log_probs", "true",
                      "--ref_cache_dir", str(tmp_path / "cache"))


OPTIONS = ["--use_weighting", "true", "--ld_alpha", "0.5", "--f_divergence_type",
           "alpha_divergence", "--f_alpha_divergence_coef", "0.5"]


@pytest.mark.parametrize("method", [["--method", "dpo"],
                                    ["--loss_type", "[sigmoid, ipo, sft]",
                                     "--loss_weights", "[0.8, 0.2, 1.0]"]])
def test_accumulation_equals_one_large_batch_with_the_options_on(tmp_path, tokenizer, method):
    """WPO's weights are per pair, LD-DPO's and f-DPO's act per pair: 2 x 4 micro-batches
    equal one batch of 8 in float64."""
    from float64_bounds import assert_float64_close

    runs = {}
    for name, size, accumulation in (("big", "8", "1"), ("small", "2", "4")):
        trainer = plain_trainer(tmp_path, tokenizer, *method, *OPTIONS, "--max_steps", "2",
                                "--per_device_train_batch_size", size,
                                "--gradient_accumulation_steps", accumulation, name=name,
                                model=tiny_llama(vocab_size=1000).double())
        trainer.train()
        log = [r for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in r]
        runs[name] = (torch.tensor([r["loss"] for r in log], dtype=torch.float64),
                      params(trainer.model))
    assert_float64_close(runs["small"][0], runs["big"][0], "loss")
    assert_float64_close(runs["small"][1], runs["big"][1], "weights")


@pytest.mark.parametrize("extra,key", [
    (["--method", "sampo", "--ld_alpha", "0.5"], "ld_alpha"),
    (["--method", "simpo", "--f_divergence_type", "js_divergence"], "f_divergence_type"),
    (["--f_divergence_type", "chi2"], "f_divergence_type"),
    (["--ld_alpha", "1.5"], "ld_alpha"),
    (["--method", "aot", "--use_weighting", "true"], "use_weighting"),
    (["--method", "kto", "--use_weighting", "true"], "use_weighting"),
])
def test_option_refusals(tmp_path, extra, key):
    config = load_config(None, ["--output_dir", str(tmp_path), "--dataset_name", "x.jsonl",
                                "--method", "dpo", *extra])
    with pytest.raises(ConfigError, match=key):
        validate(config, loads_data=False, loads_model=False)


def test_cli_refuses_sync_with_a_cached_reference_exit_2(tmp_path, capsys):
    """Through ``preftune train``: exit code 2, the message names both keys, before any
    tokenizer, row or model is read."""
    from preftune.cli import main

    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    code = main(["train", "--dataset_name", str(tmp_path / "pairs.jsonl"), "--output_dir",
                 str(tmp_path / "out"), *SYNC, "--precompute_ref_log_probs", "true"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "sync_ref_model" in err and "precompute_ref_log_probs" in err


def test_fsdp1_is_refused_naming_it(tmp_path):
    """FSDP1's flattened parameters are not the policy's weights by name: refused, pointing
    at FSDP2. (DDP, FSDP2, ZeRO-2 and ZeRO-3 run TR-DPO: tests/test_distributed.py.)"""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from preftune.reference.sync import build_sync

    config = load_config(None, ["--output_dir", str(tmp_path), *SYNC])
    parts = SimpleNamespace(config=config, accelerator=SimpleNamespace(
        distributed_type=DistributedType.FSDP, is_fsdp2=False))
    with pytest.raises(ConfigError, match="not supported under FSDP1.*fsdp_version"):
        build_sync(parts)
