"""The config switches reach the trainer, and a run with the fast station trains the same
weights as one with the padded station."""

from __future__ import annotations

import json

import pytest
import torch

from float64_bounds import assert_float64_close
from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.forward.fast import FastForward, build_forward
from preftune.forward.fast.grouping import LengthGroupedPlan
from preftune.forward.logps import PaddedForward
from preftune.train.trainer import Trainer

OFF = ["--chunked_logps", "false", "--prefix_sharing", "false", "--packing", "false"]


def test_config_switches_pick_the_station(tokenizer):
    fast = build_forward(load_config(None, ["--logps_chunk_size", "64", "--packing", "false",
                                            "--max_tokens_per_row", "256"]), tokenizer)
    assert isinstance(fast, FastForward)
    assert (fast.chunked, fast.chunk_size, fast.prefix_sharing, fast.packing,
            fast.max_tokens_per_row) == (True, 64, True, False, 256)
    assert fast.pad_token_id == tokenizer.pad_token_id
    assert isinstance(build_forward(load_config(None, OFF), tokenizer), PaddedForward)


def trainer(tmp_path, tokenizer, name, *args):
    """Two float64 runs differ in the last float32 bits of transformers' RMSNorm (the layouts
    differ). AdamW's default eps 1e-8 turns a gradient entry near 0 into a step of about
    +-lr whatever its size, so such noise could move a weight by lr; eps 1e-3 keeps the
    step linear in small gradients, and the comparison then measures the layouts alone."""
    config = load_config(None, ["--output_dir", str(tmp_path / name), "--learning_rate", "1e-3",
                                "--warmup_ratio", "0", "--logging_steps", "1",
                                "--progress_bar", "false", "--seed", "7", "--method", "dpo",
                                "--max_steps", "2", "--per_device_train_batch_size", "6",
                                "--do_eval", "false", "--save_strategy", "no",
                                "--adam_epsilon", "1e-3", *args])
    return Trainer(config, model=tiny_llama(vocab_size=1000).double(), tokenizer=tokenizer,
                   train_pairs=random_pairs(12, vocab=1000, seed=2), log=lambda *_: None)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_two_dpo_steps_train_the_same_weights(tmp_path, tokenizer, group_by_length):
    extra = ["--group_by_length", str(group_by_length).lower()]
    fast = trainer(tmp_path, tokenizer, "fast", *extra)
    padded = trainer(tmp_path, tokenizer, "padded", *OFF, *extra)
    assert isinstance(fast.forward, FastForward) and isinstance(padded.forward, PaddedForward)
    assert isinstance(fast.plan, LengthGroupedPlan) == group_by_length
    fast.train()
    padded.train()
    wf, wp = fast.model.state_dict(), padded.model.state_dict()
    assert_float64_close(wf, wp, "weights")  # float64: the bound holds on any CPU
    # What ran is written down for each model.
    info = json.loads((tmp_path / "fast" / "run_info.json").read_text())
    assert info["precision"] == "precision: no autocast; AdamW on float64 weights"
    for role in ("policy", "reference"):
        assert info["fast_forward"][role].startswith(
            "fast forward (LlamaForCausalLM): chunked_logps on, prefix_sharing on, packing on, "
            "attention dense (4-D mask); probe in float64, judged against the padded path"), info
    padded_info = json.loads((tmp_path / "padded" / "run_info.json").read_text())
    assert padded_info["fast_forward"]["policy"].startswith("fast forward off")
    assert not torch.equal(wf["lm_head.weight"],
                           tiny_llama(vocab_size=1000).double().lm_head.weight)
