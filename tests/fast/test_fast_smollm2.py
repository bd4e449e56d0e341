"""The real SmolLM2-135M-Instruct (30 layers, tied 49152-token head, fp32): the fast station
with all features on, and each alone, against PaddedForward: SimPO/DPO loss and every
parameter gradient within 1e-5.

Per-token log-probs: here float32 itself is the limit. The padded path is up to 1.5e-5
away from a float64 run of the same model; prefix sharing changes which keys SDPA's
blocks hold, so its rounding differs by about as much (1.2e-5 on one token). So the test
asks for 2e-5 from the padded path and no more than 1e-5 beyond the padded path's own
distance from float64. (The chunked head alone is bitwise equal.)"""

from __future__ import annotations

import copy

import pytest
import torch

from fast_parity import CPU, assert_same, run
from preftune.fast import FastForward
from preftune.fast.forward import Support
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


def max_error(logps, truth) -> float:
    return max(float((logps.chosen.double() - truth.chosen).abs().max()),
               float((logps.rejected.double() - truth.rejected).abs().max()))


@pytest.fixture(scope="module")
def padded_simpo(smollm2, pairs):
    return run(PaddedForward(0), smollm2, pairs, "simpo")


@pytest.mark.slow
def test_smollm2_all_features_equal_padded(smollm2, pairs, padded_simpo):
    scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert scored % 16 != 0  # 3 chunks of near-equal size (13, 13, 12)
    with torch.no_grad():
        truth = PaddedForward(0)(copy.deepcopy(smollm2).double(), pairs, CPU)
    for method in ("simpo", "dpo"):
        expected = padded_simpo if method == "simpo" else run(
            PaddedForward(0), smollm2, pairs, method, reference_model=smollm2)
        station = FastForward(0, chunk_size=16, log=print)
        got = run(station, smollm2, pairs, method, reference_model=smollm2)
        assert_same(got, expected, atol=1e-5, logps_atol=2e-5)
        assert max_error(got.logps, truth) <= max_error(expected.logps, truth) + 1e-5
        assert station.support[smollm2] == Support(True, True)


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["chunked", "prefix_sharing", "packing"])
def test_smollm2_each_feature_alone_equals_padded(smollm2, pairs, padded_simpo, switch):
    flags = {"chunked": False, "prefix_sharing": False, "packing": False, switch: True}
    station = FastForward(0, chunk_size=16, log=print, **flags)
    assert_same(run(station, smollm2, pairs, "simpo"), padded_simpo, atol=1e-5,
                logps_atol=2e-5)
    assert not station.support[smollm2].notes
