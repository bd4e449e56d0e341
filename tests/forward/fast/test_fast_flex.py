"""FlexAttention block masks for prefix sharing and packing.

On CPU torch runs FlexAttention forward only (through torch.compile) and has no backward,
so the station keeps dense masks there and says so. Here: the mask rule itself against
the dense mask, element by element; the model's forward with the block mask against the
dense one, judged against float64, where torch compiles it; the station's CPU notice. The
GPU script (scripts/gpu_check.py) runs the station, forward and backward, on CUDA."""

from __future__ import annotations

import pytest
import torch

from float64_bounds import assert_no_farther_from_float64, max_diff, ulps_floor
from tiny import random_pairs, tiny_llama
from preftune.forward.fast import FastForward, flex
from preftune.forward.fast.layout import TokenizedPair, build_layout
from preftune.forward.logps import PaddedForward

pytestmark = pytest.mark.skipif(not flex.available(), reason="torch has no FlexAttention")
CPU = torch.device("cpu")
VOCAB = 1000


def layouts():
    pairs = random_pairs(6, vocab=VOCAB, seed=3) + [
        TokenizedPair(50, list(range(10, 30)), list(range(30, 40)), list(range(40, 45)))]
    return [build_layout(pairs, 0, prefix_sharing=True, packing=True),
            build_layout(pairs, 0, prefix_sharing=True, packing=False),
            build_layout(pairs, 0, prefix_sharing=False, packing=True, max_tokens_per_row=40)]


@pytest.mark.parametrize("layout", layouts(), ids=["shared+packed", "shared", "packed"])
def test_the_mask_rule_is_the_dense_masks(layout):
    from torch.nn.attention.flex_attention import create_mask

    rows, width = layout.input_ids.shape
    dense = create_mask(flex.mask_mod(layout, CPU), rows, 1, width, width, device="cpu")
    assert torch.equal(dense, layout.attention_allowed(CPU))
    blocks = flex.block_mask(layout, CPU)
    assert blocks.shape[0] == rows and blocks.shape[-1] == width


def test_a_forward_pass_through_flex_equals_the_dense_mask():
    """The model itself with the block mask, float32 (torch compiles FlexAttention on CPU for
    float32 only), no grad: no farther from a float64 dense run than a few times the
    float32 dense run is. torch 2.13's CPU code generation fails to compile it for some
    shapes and CPUs (an undeclared ``cur_kvSplitSize`` in the generated C++): skipped then,
    with that reason."""
    from torch._inductor.exc import InductorError

    from preftune.forward.fast.forward import attention_mask

    layout = build_layout(random_pairs(4, vocab=VOCAB, seed=1), 0)
    model = tiny_llama(vocab_size=VOCAB, seed=0).eval()
    real = layout.unit_ids >= 0

    def logits(m, mask):
        return m(input_ids=layout.input_ids, attention_mask=mask,
                 position_ids=layout.position_ids, use_cache=False).logits[real]

    with torch.no_grad():
        dense = logits(model, attention_mask(layout, "bool", torch.float32, CPU))
        truth = logits(tiny_llama(vocab_size=VOCAB, seed=0).eval().double(),
                       attention_mask(layout, "bool", torch.float64, CPU))
        model.set_attn_implementation(flex.FLEX)
        try:
            got = logits(model, flex.block_mask(layout, CPU))
        except InductorError as error:
            pytest.skip(f"torch cannot compile FlexAttention here: {str(error)[:200]}")
    assert_no_farther_from_float64(max_diff(got, truth), max_diff(dense, truth),
                                   ulps_floor(truth), "logits")


def test_on_cpu_the_station_says_flex_is_off_and_keeps_dense_masks():
    model = tiny_llama(vocab_size=VOCAB, seed=0)
    lines = []
    station = FastForward(0, attention="flex", log=lines.append)
    pairs = random_pairs(4, vocab=VOCAB, seed=5)
    logps = station(model, pairs, CPU)
    (logps.chosen.sum() + logps.rejected.sum()).backward()  # trains on dense masks
    support = station.support[model]
    assert support.custom_mask and not support.flex
    assert model.config._attn_implementation == "sdpa"
    assert lines[0] == ("fast forward (LlamaForCausalLM): flex attention off: torch runs "
                        "FlexAttention on CPU without a backward; dense masks instead")
    assert "attention dense (4-D mask)" in support.summary
    expected = PaddedForward(0)(model, pairs, CPU)
    assert max_diff(logps.chosen, expected.chosen) <= 4 * ulps_floor(expected.chosen)


def test_unknown_attention_switch_is_refused():
    with pytest.raises(ValueError, match="fast_attention must be one of auto, dense, flex"):
        FastForward(0, attention="sparse")


@pytest.mark.parametrize("device, probe, expected", [
    ("cuda", True, True),    # a GPU with the probe to check it: flex
    ("cuda", False, False),  # nothing would check flex before the first step: dense
    ("cpu", True, False),    # no FlexAttention backward on CPU
])
def test_auto_takes_flex_on_a_gpu_only_where_the_probe_checks_it(device, probe, expected):
    model = tiny_llama(vocab_size=VOCAB, seed=0)
    station = FastForward(0, attention="auto", probe=probe, log=lambda line: None)
    notes = []
    assert station._attention_switch(model, torch.device(device), notes) is expected
    assert (model.config._attn_implementation == flex.FLEX) is expected
    assert notes == []  # auto says nothing when it keeps dense masks


def test_a_flex_kernel_that_fails_on_a_later_batch_falls_back_to_dense(monkeypatch):
    model = tiny_llama(vocab_size=VOCAB, seed=0)
    lines = []
    station = FastForward(0, log=lines.append)
    pairs = random_pairs(4, vocab=VOCAB, seed=5)
    station(model, pairs, CPU)  # the probe settles on dense masks; pretend it chose flex
    settled = station.support[model]
    station.support[model] = type(settled)(settled.chunked, True, flex=True)
    model.set_attn_implementation(flex.FLEX)

    def no_kernel(layout, device):
        raise RuntimeError("inductor: failed to build a kernel for this shape\nmore")

    monkeypatch.setattr(flex, "block_mask", no_kernel)
    logps = station(model, pairs, CPU)
    support = station.support[model]
    assert support.custom_mask and not support.flex
    assert model.config._attn_implementation == "sdpa"
    assert lines[-1] == ("fast forward (LlamaForCausalLM): flex attention off from here: "
                         "RuntimeError: inductor: failed to build a kernel for this shape")
    expected = PaddedForward(0)(model, pairs, CPU)
    assert max_diff(logps.chosen, expected.chosen) <= 4 * ulps_floor(expected.chosen)
