"""Label smoothing (cDPO): -(1 - eps) log sigma(z) - eps log sigma(-z), on every
sigmoid-family objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from objective_fixtures import random_batch, sequence_logps
from preftune.objectives import compute_objective, get_objective
from preftune.objectives.common import smoothed_sigmoid_loss

SIGMOID_FAMILY = ["dpo", "rdpo", "sampo", "cpo", "simpo", "cpo-simpo"]


def terms(name, hparams, batch=None):
    batch = batch or random_batch(0)
    objective = get_objective(name)
    return compute_objective(objective, hparams, batch.policy,
                             batch.reference if objective.needs_reference else None,
                             example_ids=batch.example_ids).terms


@pytest.mark.parametrize("name", SIGMOID_FAMILY)
def test_zero_smoothing_is_the_plain_loss(name):
    """eps = 0 is bit-for-bit the default. Then eps = 0.2 against the formula, with z
    recovered from the plain loss: loss_0 = -log sigma(z) gives e^-z = e^loss_0 - 1, and
    log sigma(-z) = log sigma(z) - z."""
    plain = terms(name, {}).losses
    explicit = terms(name, {"label_smoothing": 0.0}).losses
    assert torch.equal(plain, explicit)
    log_sigma = -plain
    z = -torch.log(torch.expm1(plain))
    smoothed = terms(name, {"label_smoothing": 0.2}).losses
    torch.testing.assert_close(smoothed, -0.8 * log_sigma - 0.2 * (log_sigma - z))


def test_hand_number_eps_0_1():
    """DPO, h = 2, beta 0.1 -> z = 0.2. eps 0.1:
    0.9 log(1 + e^-0.2) + 0.1 log(1 + e^0.2) = 0.9 * 0.598139 + 0.1 * 0.798139 = 0.618139
    (= log(1 + e^-0.2) + 0.1 * 0.2, since log(1 + e^z) = z + log(1 + e^-z))."""
    policy = sequence_logps([[-1, -2]], [[-1]])
    reference = sequence_logps([[-2, -3]], [[-1]])
    out = compute_objective(get_objective("dpo"), {"label_smoothing": 0.1}, policy, reference)
    assert out.terms.losses.item() == pytest.approx(math.log1p(math.exp(-0.2)) + 0.02)
    assert out.terms.losses.item() == pytest.approx(0.6181388694)


def test_half_smoothing_is_symmetric_with_minimum_log_2_at_zero():
    """eps = 0.5: 0.5 [softplus(-z) + softplus(z)] is even in z, equals log 2 = 0.693147 at
    z = 0 with zero slope there, and is >= log 2 everywhere: the labels carry no signal."""
    z = torch.linspace(-6, 6, 121, dtype=torch.float64, requires_grad=True)
    loss = smoothed_sigmoid_loss(z, 0.5)
    torch.testing.assert_close(loss, loss.flip(0))
    assert (loss >= math.log(2) - 1e-15).all()
    middle = 60  # z = 0
    assert loss[middle].item() == pytest.approx(math.log(2))
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert grad[middle].item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", SIGMOID_FAMILY)
def test_half_smoothing_makes_swapped_labels_equivalent(name):
    """Swapping chosen and rejected negates z (for these inputs the lengths are equal, so
    R-DPO's length term is 0 and SimPO's gamma is set to 0); at eps = 0.5 the loss is
    unchanged."""
    batch = random_batch(1, chosen_lengths=(4, 2, 3), rejected_lengths=(4, 2, 3),
                         chosen_width=5, rejected_width=5)
    swapped = random_batch(1, chosen_lengths=(4, 2, 3), rejected_lengths=(4, 2, 3),
                           chosen_width=5, rejected_width=5)
    for logps in (swapped.policy, swapped.reference):
        logps.chosen, logps.rejected = logps.rejected, logps.chosen
    hparams = {"label_smoothing": 0.5}
    if "gamma" in get_objective(name).defaults:
        hparams["gamma"] = 0.0
    torch.testing.assert_close(terms(name, hparams, batch).losses,
                               terms(name, hparams, swapped).losses)


@pytest.mark.parametrize("eps", [-0.1, 0.6])
def test_out_of_range_smoothing_is_refused(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_sigmoid_loss(torch.zeros(2), eps)


def test_default_matches_logsigmoid():
    z = torch.tensor([-30.0, -1.0, 0.0, 2.5, 40.0], dtype=torch.float64)
    torch.testing.assert_close(smoothed_sigmoid_loss(z, 0.0), -F.logsigmoid(z))
