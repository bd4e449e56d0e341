"""The fast path under the settings users train with, against the padded path: gradient
checkpointing (reentrant and not) with prefix sharing and packing, LoRA, untied embeddings,
Qwen2 and Mistral configs (float64, exact to a few float32 ulps); bf16 autocast over float32
weights and bf16 weights (no farther from a float64 run than a few times the padded path,
with a floor of bf16 ulps). tests/float64_bounds.py says why the bounds hold on any CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from fast_parity import Result, assert_same, logps_of, run
from float64_bounds import assert_no_farther_from_float64, max_diff, scaled_max_diff, ulps_floor
from tiny import random_pairs, tiny_llama
from preftune.forward.fast import FastForward
from preftune.forward.logps import PaddedForward

VOCAB = 1000
PADDED = PaddedForward(0)


def fast(**kwargs) -> FastForward:
    kwargs.setdefault("chunk_size", 7)
    return FastForward(0, log=lambda line: None, **kwargs)


def pairs():
    return random_pairs(6, vocab=VOCAB, seed=21)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("method", ["simpo", "dpo"])
def test_gradient_checkpointing(reentrant, method):
    """Checkpointed layers recompute their forward in backward under the same 4-D mask."""
    policy = tiny_llama(vocab_size=VOCAB, seed=0).double().train()
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    reference = tiny_llama(vocab_size=VOCAB, seed=1).double().eval()
    station = fast()
    got = run(station, policy, pairs(), method, reference)
    assert station.support[policy].custom_mask and station.support[policy].chunked
    plain = tiny_llama(vocab_size=VOCAB, seed=0).double().train()
    assert_same(got, run(PADDED, plain, pairs(), method, reference))


@pytest.mark.parametrize("checkpointing", [None, False, True])
def test_lora(checkpointing):
    """LoRA adapters (the only trainable parameters) get the padded path's gradients, also
    under reentrant checkpointing, which needs inputs that require grad."""
    from peft import LoraConfig, get_peft_model

    def lora_model():
        model = tiny_llama(vocab_size=VOCAB, seed=0).double()
        if checkpointing is not None:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
            model.enable_input_require_grads()
        torch.manual_seed(5)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "v_proj"]))
        for name, param in model.named_parameters():  # B starts at 0: give it a value
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        return model.train()

    got = run(fast(), lora_model(), pairs(), "simpo")
    expected = run(PADDED, lora_model(), pairs(), "simpo")
    assert got.grads and all("lora_" in name for name in got.grads)
    assert all(float(g.abs().max()) > 0 for g in got.grads.values())
    assert_same(got, expected)


def test_untied_embeddings():
    model = tiny_llama(vocab_size=VOCAB, seed=3, tie=False).double()
    got, expected = run(fast(), model, pairs(), "dpo", model), run(PADDED, model, pairs(), "dpo",
                                                                   model)
    assert "lm_head.weight" in got.grads and "model.embed_tokens.weight" in got.grads
    assert_same(got, expected)


def tiny_qwen2():
    """Biases on q/k/v, untied head, a sliding-window setting that is off."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, use_sliding_window=False, attn_implementation="sdpa"))


def tiny_mistral():
    """A sliding window wider than every sequence here."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        sliding_window=256, attn_implementation="sdpa"))


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_mistral], ids=["qwen2", "mistral"])
def test_other_architectures(build):
    model = build().double()
    station = fast()
    got = run(station, model, pairs(), "simpo")
    assert station.support[model].chunked and station.support[model].custom_mask
    assert_same(got, run(PADDED, model, pairs(), "simpo"))


def run_autocast(forward, model, method="simpo") -> Result:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return run(forward, model, pairs(), method)


def assert_bf16_as_close(got: Result, expected: Result, truth: Result) -> None:
    """Fast and padded both in bf16: the fast path no farther from float64 than a few times
    the padded path, with a floor of bf16 ulps (log-probs, loss, gradients)."""
    for what, pick, distance, floor in (
            ("log-probs", logps_of, max_diff, ulps_floor(logps_of(truth), torch.bfloat16)),
            ("loss", lambda r: r.loss, max_diff, ulps_floor(truth.loss, torch.bfloat16)),
            ("gradients", lambda r: r.grads, scaled_max_diff,
             ulps_floor(torch.ones(()), torch.bfloat16))):
        assert_no_farther_from_float64(distance(pick(got), pick(truth)),
                                       distance(pick(expected), pick(truth)), floor, what)


@pytest.mark.parametrize("weights", ["float32 under bf16 autocast", "bfloat16"])
def test_bf16(weights):
    base = tiny_llama(vocab_size=VOCAB, seed=0)
    truth = run(PADDED, copy.deepcopy(base).double(), pairs(), "simpo")
    if weights == "bfloat16":
        model = base.to(torch.bfloat16)
        got, expected = run(fast(), model, pairs(), "simpo"), run(PADDED, model, pairs(), "simpo")
    else:
        got, expected = run_autocast(fast(), base), run_autocast(PADDED, base)
    assert got.logps.chosen.dtype == torch.float32  # log-probs in float32 either way
    assert_bf16_as_close(got, expected, truth)
