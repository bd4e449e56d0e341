"""FastForward == PaddedForward on tiny random models: per-token log-probs, SimPO and DPO
step losses, and every parameter gradient, in float64 within a few float32 ulps of their
scale (float32 rounding differs between CPUs: tests/float64_bounds.py; the real model's
float32 runs are in test_fast_smollm2.py); with all features on,
each alone, every pair of them, odd chunk sizes, packing budgets, other heads and
attention implementations; and the fallbacks when a model cannot take a custom mask."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from fast_parity import CPU, assert_same, run
from float64_bounds import assert_float64_close
from tiny import random_pairs, tiny_llama
from preftune.forward.fast import FastForward
from preftune.forward.fast.forward import static_support
from preftune.forward.fast.layout import build_layout
from preftune.forward.logps import PaddedForward
from preftune.types import TokenizedPair

VOCAB = 1000
PADDED = PaddedForward(pad_token_id=0)
SWITCHES = [c for c in itertools.product([True, False], repeat=3) if any(c)]


def pairs_with_uneven_completions():
    """random ragged pairs plus hand-made extremes: 1 vs 9 tokens, 9 vs 1, equal lengths."""
    extra = [TokenizedPair(100, [5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16, 17]),
             TokenizedPair(101, [5], [18, 19, 20, 21, 22, 23, 24, 25, 26], [27]),
             TokenizedPair(102, [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], [42, 43],
                           [44, 45])]
    return random_pairs(5, vocab=VOCAB, seed=11) + extra


def fast(**kwargs):
    kwargs.setdefault("chunk_size", 7)
    return FastForward(0, log=lambda line: None, **kwargs)


@pytest.fixture(scope="module")
def models():
    return (tiny_llama(vocab_size=VOCAB, seed=0).double(),
            tiny_llama(vocab_size=VOCAB, seed=1).double().eval())


@pytest.mark.parametrize("method", ["simpo", "dpo"])
def test_all_features_match_padded(models, method):
    policy, reference = models
    pairs = pairs_with_uneven_completions()
    scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert scored % 7 != 0  # the last chunk is a partial one
    expected = run(PADDED, policy, pairs, method, reference)
    assert_same(run(fast(), policy, pairs, method, reference), expected)


@pytest.mark.parametrize("chunked,prefix_sharing,packing", SWITCHES)
@pytest.mark.parametrize("method", ["simpo", "dpo"])
def test_each_switch_matches_padded(models, method, chunked, prefix_sharing, packing):
    policy, reference = models
    pairs = pairs_with_uneven_completions()
    station = fast(chunked=chunked, prefix_sharing=prefix_sharing, packing=packing)
    assert_same(run(station, policy, pairs, method, reference),
                run(PADDED, policy, pairs, method, reference))


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 10_000])
def test_chunk_sizes(models, chunk_size):
    policy, _ = models
    pairs = random_pairs(4, vocab=VOCAB, seed=2)
    assert_same(run(fast(chunk_size=chunk_size), policy, pairs, "simpo"),
                run(PADDED, policy, pairs, "simpo"))


@pytest.mark.parametrize("budget,rows", [(1, 6), (None, None), (10_000, 1)])
def test_packing_budgets(models, budget, rows):
    """A budget below every unit gives one row per pair; a huge one a single row."""
    policy, _ = models
    long = TokenizedPair(50, list(range(10, 30)), list(range(30, 40)), list(range(40, 45)))
    pairs = random_pairs(5, vocab=VOCAB, seed=4) + [long]
    layout = build_layout(pairs, 0, max_tokens_per_row=budget)
    if rows is not None:
        assert layout.input_ids.shape[0] == rows
    else:  # default budget: the longest pair, never wider than one [prompt|chosen|rejected]
        assert layout.input_ids.shape[1] == long.num_tokens == 35
        assert layout.input_ids.shape[0] < len(pairs)
    assert_same(run(fast(max_tokens_per_row=budget), policy, pairs, "simpo"),
                run(PADDED, policy, pairs, "simpo"))


def test_untied_head_with_bias():
    """An untied head with a bias: the bias gets its gradient through the chunked path."""
    model = tiny_llama(vocab_size=VOCAB, seed=3, tie=False).double()
    torch.manual_seed(0)
    head = torch.nn.Linear(64, VOCAB, bias=True, dtype=torch.float64)
    model.lm_head = head
    pairs = random_pairs(4, vocab=VOCAB, seed=5)
    got, expected = run(fast(), model, pairs, "simpo"), run(PADDED, model, pairs, "simpo")
    assert "lm_head.bias" in expected.grads
    assert_same(got, expected)


def test_eager_attention_takes_the_additive_mask(models):
    model = tiny_llama(vocab_size=VOCAB, seed=0).double()
    model.set_attn_implementation("eager")
    pairs = pairs_with_uneven_completions()
    station = fast()
    assert_same(run(station, model, pairs, "simpo"), run(PADDED, model, pairs, "simpo"))
    assert station.support[model].custom_mask


def tiny_gemma2(sliding_window: int):
    """Logit soft-capping (the chunked head applies it), eager attention, sliding window."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, max_position_embeddings=512,
                          sliding_window=sliding_window, final_logit_softcapping=5.0)
    return Gemma2ForCausalLM(config).double()


@pytest.mark.parametrize("window", [64, 6])
def test_softcapped_sliding_window_model(window):
    """Window 64: every sequence fits, custom masks are exact. Window 6: sequences are
    longer, the model's own window mask must apply, so those batches take plain rows."""
    model = tiny_gemma2(window)
    # No padding anywhere: in float64, transformers' eager sliding-window attention turns a
    # padding row with no visible key into NaN (its float64 mask minimum is -inf in the
    # float32 softmax), which then reaches every row through 0 * NaN.
    rng = random.Random(12)
    pairs = [TokenizedPair(i, *[[rng.randrange(3, VOCAB) for _ in range(n)] for n in (8, 5, 5)])
             for i in range(4)]
    station = fast()
    assert_same(run(station, model, pairs, "simpo"), run(PADDED, model, pairs, "simpo"))
    support = station.support[model]
    assert support.chunked and support.custom_mask, support.notes


def test_reference_pass_builds_no_graph(models):
    policy, _ = models
    pairs = random_pairs(3, vocab=VOCAB, seed=6)
    with torch.no_grad():
        got, expected = fast()(policy, pairs, CPU), PADDED(policy, pairs, CPU)
    assert not got.chosen.requires_grad and not got.rejected.requires_grad
    assert_float64_close(got.chosen, expected.chosen)
    assert_float64_close(got.rejected, expected.rejected)


def test_model_rejecting_custom_masks_falls_back_with_a_notice():
    model = tiny_llama(vocab_size=VOCAB, seed=0).double()
    plain_forward = model.forward

    def forward(*args, **kwargs):
        if kwargs["attention_mask"].ndim == 4:
            raise ValueError("this model takes 2-D attention masks only")
        return plain_forward(*args, **kwargs)

    model.forward = forward
    lines = []
    station = FastForward(0, log=lines.append)
    pairs = random_pairs(4, vocab=VOCAB, seed=7)
    assert_same(run(station, model, pairs, "simpo"), run(PADDED, model, pairs, "simpo"))
    support = station.support[model]
    assert support.chunked and not support.custom_mask
    assert len(lines) == 2 and "2-D attention masks only" in lines[0]
    assert "chunked_logps on, prefix_sharing off, packing off; probe in float64" in lines[1]


def ignoring_custom_masks(model):
    """A model that silently drops a 4-D mask and the position ids."""
    plain_forward = model.forward

    def forward(*args, **kwargs):
        if kwargs["attention_mask"].ndim == 4:
            kwargs["attention_mask"] = None
            kwargs.pop("position_ids", None)
        return plain_forward(*args, **kwargs)

    model.forward = forward
    return model


def test_model_ignoring_custom_masks_is_caught_by_the_probe():
    """A model that silently drops the 4-D mask and position ids would score rejected
    tokens after the chosen ones: the first-call probe sees the difference."""
    model = ignoring_custom_masks(tiny_llama(vocab_size=VOCAB, seed=0).double())
    lines = []
    station = FastForward(0, log=lines.append)
    pairs = random_pairs(4, vocab=VOCAB, seed=8)
    assert_same(run(station, model, pairs, "simpo"), run(PADDED, model, pairs, "simpo"))
    assert not station.support[model].custom_mask
    assert len(lines) == 2 and "probe (float64, judged against the padded path) differs" \
        in lines[0]


def test_unsupported_attention_and_head_are_switched_off():
    """Decided from the config and classes alone, before any probe."""
    model = tiny_llama(vocab_size=VOCAB, seed=0)
    model.config._attn_implementation = "flash_attention_2"  # only read, never run
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a Linear
    support = static_support(model, chunked=True, custom_mask=True)
    assert not support.chunked and not support.custom_mask
    assert any("flash_attention_2" in n for n in support.notes)
    assert any("Sequential" in n for n in support.notes)


def test_bf16_model_stays_close_to_the_padded_path():
    """bf16 weights: log-softmax runs in float32 on both paths; the remaining difference
    is bf16 rounding of activations in differently shaped matmuls."""
    model = tiny_llama(vocab_size=VOCAB, seed=0).to(torch.bfloat16)
    pairs = random_pairs(4, vocab=VOCAB, seed=9)
    got, expected = run(fast(), model, pairs, "simpo"), run(PADDED, model, pairs, "simpo")
    assert got.logps.chosen.dtype == torch.float32
    assert torch.allclose(got.logps.chosen, expected.logps.chosen, atol=0.05)
    assert torch.allclose(got.logps.rejected, expected.logps.rejected, atol=0.05)
    assert abs(float(got.loss) - float(expected.loss)) < 0.02
    for name, e in expected.grads.items():
        cos = torch.nn.functional.cosine_similarity(got.grads[name].float().flatten(),
                                                    e.float().flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))


def probe_lines(model, autocast: bool, pairs=None):
    lines = []
    station = FastForward(0, log=lines.append)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        station(model, pairs or random_pairs(4, vocab=VOCAB, seed=9), CPU)
    return station.support[model], lines


@pytest.mark.parametrize("weights,autocast,where", [
    (torch.float32, True, "probe in bfloat16 autocast, judged against float32"),
    (torch.bfloat16, False, "probe in bfloat16 weights, judged against the padded path"),
    (torch.bfloat16, True, "probe in bfloat16 weights, judged against the padded path")])
def test_the_probe_keeps_the_fast_path_in_bf16(weights, autocast, where):
    """bf16 rounding (~0.05 on log-probs) is not a reason to drop the fast path: the probe
    judges in the precision the run computes in, and says which."""
    support, lines = probe_lines(tiny_llama(vocab_size=VOCAB, seed=0).to(weights), autocast)
    assert support.chunked and support.custom_mask, lines
    assert lines == [support.summary]
    assert "chunked_logps on, prefix_sharing on, packing on, attention dense (4-D mask); " + where in lines[0]


def test_the_bf16_probe_still_catches_an_ignored_mask():
    model = ignoring_custom_masks(tiny_llama(vocab_size=VOCAB, seed=0))
    support, lines = probe_lines(model, autocast=True)
    assert support.chunked and not support.custom_mask
    assert "prefix_sharing/packing off: probe (bfloat16 autocast, judged against float32)" \
        in lines[0]


def test_the_float32_truth_bypasses_accelerate_autocast():
    """accelerate's bf16 wraps the model's forward in autocast; the probe's float32 truth
    runs the original forward, so it equals a plain float32 run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from preftune.forward.fast.probe import without_autocast

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        model = Accelerator(cpu=True, mixed_precision="bf16").prepare(
            tiny_llama(vocab_size=VOCAB, seed=0))
        pairs = random_pairs(3, vocab=VOCAB, seed=1)
        with torch.no_grad():
            wrapped = PADDED(model, pairs, CPU)
            with without_autocast(model):
                plain = PADDED(model, pairs, CPU)
            reference = PADDED(tiny_llama(vocab_size=VOCAB, seed=0), pairs, CPU)
        assert torch.equal(plain.chosen, reference.chosen)
        assert not torch.equal(wrapped.chosen, reference.chosen)  # bf16 did run there
        assert "_original_forward" in model.__dict__ and "forward" in model.__dict__
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
