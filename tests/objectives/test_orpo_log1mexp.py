"""ORPO's log(1 - p): accurate and finite from p -> 1 (avg -> 0) to p -> 0 (avg -> -inf)."""

from __future__ import annotations

import math

import pytest
import torch

from objective_fixtures import sequence_logps, with_grad
from preftune.objectives import compute_objective, get_objective, step_loss
from preftune.objectives.orpo import log1mexp


def exact(x: float) -> float:
    """float64 reference: log(-expm1(x)) near 0, log1p(-exp(x)) far from it."""
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


POINTS = [-1e-7, -1e-3, -0.5, -math.log(2), -0.7, -3.0, -20.0, -50.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_matches_float64_math(dtype):
    """log1mexp(-1e-7) = log(1e-7 - 5e-15) ~ -16.118; log1mexp(-50) = log1p(-e^-50)
    ~ -1.9e-22 (the naive log(1 - exp(x)) gives log(1e-7) only to 7 digits in float32 and
    exactly 0 at -50)."""
    x = torch.tensor(POINTS, dtype=dtype)
    expected = torch.tensor([exact(v) for v in x.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x).double(), expected, rtol=2e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_and_its_gradient_stay_finite_at_the_edges(dtype):
    x = torch.tensor([0.0, -1e-7, -1e-30, -50.0, -200.0], dtype=dtype, requires_grad=True)
    value = log1mexp(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    # d/dx log(1 - e^x) = -e^x / (1 - e^x): about -1/|x| near 0, about -e^x far away.
    assert grad[1].item() == pytest.approx(-1e7, rel=1e-3)
    assert grad[3].item() == pytest.approx(-math.exp(-50.0), rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orpo_loss_is_finite_for_extreme_average_log_probs(dtype):
    """avg(y_w) = -1e-7 (p ~ 1: log odds ~ +16.1) and avg(y_l) = -50 (log odds ~ -50):
    the loss is -0.1 log sigma(66.1) ~ 2e-30 and the gradients are finite. The log-odds are
    computed in float32 even from bf16 log-probs."""
    policy = with_grad(sequence_logps([[-1e-7]], [[-50.0, -50.0]], dtype=dtype))
    output = compute_objective(get_objective("orpo"), {}, policy)
    assert output.terms.losses.dtype == torch.float32
    loss = step_loss(output, examples_in_step=1, nll_tokens_in_step=1.0)
    grads = torch.autograd.grad(loss, [policy.chosen, policy.rejected])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(output.terms.metrics["log_odds_chosen"]).all()


def test_orpo_survives_probability_one():
    """avg = 0 exactly (every token predicted with p = 1 in floating point): log(1 - p)
    would be -inf and the log odds +inf; the clamp keeps both finite."""
    policy = with_grad(sequence_logps([[0.0, 0.0]], [[0.0]], dtype=torch.float32))
    output = compute_objective(get_objective("orpo"), {}, policy)
    loss = step_loss(output, examples_in_step=1, nll_tokens_in_step=2.0)
    grads = torch.autograd.grad(loss, [policy.chosen, policy.rejected])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
