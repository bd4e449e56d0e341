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
from preftune.forward.fast import FastForward
from preftune.forward.fast.forward import Support
from preftune.forward.fast.layout import CHOSEN, REJECTED
from preftune.forward.logps import PaddedForward
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
    from preftune.forward.fast import forward as fast_forward

    build = fast_forward.build_layout
    monkeypatch.setattr(fast_forward, "build_layout", lambda *a, **k: bug(build(*a, **k)))
    station = FastForward(0, chunk_size=16, probe=False, log=print)
    expected, truth = padded["simpo"]
    with pytest.raises(AssertionError, match="from float64"):
        assert_float32_as_close(run(station, smollm2, pairs, "simpo"), expected, truth)


LONGER = [
    ("Explain why the sky is blue in two sentences.",
     " Sunlight is scattered by the molecules of the air, and blue light, with its shorter "
     "wavelength, is scattered much more than red light. So wherever we look away from the "
     "sun, the sky sends us mostly scattered blue light.",
     " The sky is blue because it reflects the color of the oceans, which cover most of the "
     "planet and are blue themselves."),
    ("Give me a tip for learning to cook.",
     " Start with a few simple dishes you like and cook each of them several times, changing "
     "one thing at a time, so you learn what each ingredient and step does.",
     " Buy the most expensive knives you can find; good tools are the only thing that matters."),
    ("What is a prime number?",
     " A prime number is a whole number greater than one whose only divisors are one and "
     "itself, such as 2, 3, 5, 7 and 11.", " A prime number is any odd number."),
]


@pytest.mark.slow
@pytest.mark.parametrize("station", ["padded", "chunked", "fast"])
def test_log_probs_carry_no_bias_against_float64(smollm2, smollm2_float64, tokenizer, station):
    """Summed completion log-probs (172 tokens, sums near -276) against a float64 forward of
    the same model: the mean signed error a token stays under 1e-6. float32 ``log_softmax``
    on CPU read +6.3e-6 a token here, always high, so a sequence's sum drifted by 1e-3;
    ``logits[target] - logsumexp`` reads -2.8e-8 (padded path and chunked head alike), and
    prefix sharing's different attention kernel adds 2e-7."""
    eos = [tokenizer.eos_token_id]
    pairs = [TokenizedPair(i, tokenizer(p)["input_ids"], tokenizer(c)["input_ids"] + eos,
                           tokenizer(r)["input_ids"] + eos) for i, (p, c, r) in enumerate(LONGER)]
    forward = {"padded": PaddedForward(0),
               "chunked": FastForward(0, prefix_sharing=False, packing=False, log=print),
               "fast": FastForward(0, log=print)}[station]
    with torch.no_grad():
        truth = PaddedForward(0)(smollm2_float64, pairs, CPU)
        got = forward(smollm2, pairs, CPU)
    tokens = int(truth.chosen_mask.sum() + truth.rejected_mask.sum())
    signed = float((got.chosen.double() - truth.chosen).sum()
                   + (got.rejected.double() - truth.rejected).sum())
    assert tokens > 150
    assert abs(signed) / tokens < 1e-6, signed / tokens
