"""The real SmolLM2-135M-Instruct (30 layers, tied 49152-token head, fp32): the fast station
with all features on, and each alone, against PaddedForward, both judged against a float64
run of the same step: per-token log-probs, SimPO/DPO loss and every parameter gradient.

float32 itself is the limit here: the padded path is ~1e-5 from float64 on log-probs, and
prefix sharing changes which keys SDPA's blocks hold, so its rounding differs by about as
much; another CPU's kernels sum in yet another order. So the fast path may be no farther
from float64 than a few times the padded path's own distance (tests/float64_bounds.py),
which a real error (a token off, a wrong mask) exceeds by orders of magnitude."""

from __future__ import annotations

import copy

import pytest
import torch

from fast_parity import CPU, assert_float32_as_close, run
from preftune.fast import FastForward
from preftune.fast.forward import Support
from preftune.fast.layout import CHOSEN, REJECTED
from preftune.forward import PaddedForward
from preftune.types import TokenizedPair

TEXTS = [
    ("What is the capital of France?", " Paris.", " I think it might be Lyon or Marseille."),
    ("Name a primary colour.", " Blue, for example.", " Green."),
    ("How do I boil an egg? Please keep it short.", " Simmer it for nine minutes.",
     " Eggs cannot be boiled."),
]


@pytest.fixture(scope="module")
def smollm2():
    from preftune.model_io import load_model

    return load_model("smollm2")


@pytest.fixture(scope="module")
def pairs(tokenizer):
    eos = [tokenizer.eos_token_id]
    return [TokenizedPair(i, tokenizer(p)["input_ids"], tokenizer(c)["input_ids"] + eos,
                          tokenizer(r)["input_ids"] + eos)
            for i, (p, c, r) in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def smollm2_float64(smollm2):
    return copy.deepcopy(smollm2).double()


@pytest.fixture(scope="module")
def padded(smollm2, smollm2_float64, pairs):
    """{method: (float32 padded run, float64 padded run)}."""
    return {method: (run(PaddedForward(0), smollm2, pairs, method, reference_model=smollm2),
                     run(PaddedForward(0), smollm2_float64, pairs, method,
                         reference_model=smollm2_float64))
            for method in ("simpo", "dpo")}


@pytest.mark.slow
def test_smollm2_all_features_equal_padded(smollm2, pairs, padded):
    scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert scored % 16 != 0  # 3 chunks of near-equal size (13, 13, 12)
    for method in ("simpo", "dpo"):
        expected, truth = padded[method]
        station = FastForward(0, chunk_size=16, log=print)
        got = run(station, smollm2, pairs, method, reference_model=smollm2)
        assert_float32_as_close(got, expected, truth)
        assert station.support[smollm2] == Support(True, True)


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["chunked", "prefix_sharing", "packing"])
def test_smollm2_each_feature_alone_equals_padded(smollm2, pairs, padded, switch):
    flags = {"chunked": False, "prefix_sharing": False, "packing": False, switch: True}
    station = FastForward(0, chunk_size=16, log=print, **flags)
    expected, truth = padded["simpo"]
    assert_float32_as_close(run(station, smollm2, pairs, "simpo"), expected, truth)
    assert not station.support[smollm2].notes


def shifted_scores(layout):
    """Off by one token: each target scored from the hidden state one position earlier."""
    layout.score_index = (layout.score_index - 1).clamp(min=0)
    return layout


def rejected_sees_chosen(layout):
    """A mask off by one token: the first rejected token also sees the last chosen one."""
    allowed = layout.attention_allowed

    def leaky(device=None):
        mask = allowed(device).clone()
        branches = layout.branches.to(mask.device)
        for row in range(branches.shape[0]):
            columns = branches[row].tolist()
            for q in range(1, len(columns)):
                if columns[q] == REJECTED and columns[q - 1] == CHOSEN:
                    mask[row, 0, q, q - 1] = True
        return mask

    layout.attention_allowed = leaky
    return layout


@pytest.mark.slow
@pytest.mark.parametrize("bug", [shifted_scores, rejected_sees_chosen])
def test_the_bound_catches_a_token_off(monkeypatch, smollm2, pairs, padded, bug):
    """The float64-derived bound is tight enough to fail a deliberate one-token error."""
    from preftune.fast import forward as fast_forward

    build = fast_forward.build_layout
    monkeypatch.setattr(fast_forward, "build_layout", lambda *a, **k: bug(build(*a, **k)))
    station = FastForward(0, chunk_size=16, probe=False, log=print)
    expected, truth = padded["simpo"]
    with pytest.raises(AssertionError, match="from float64"):
        assert_float32_as_close(run(station, smollm2, pairs, "simpo"), expected, truth)
