"""DiscoPOP and AlphaPO stay finite, with finite gradients, where TRL 1.16 returns NaN.

Measured in TRL 1.16 (asserted below where trl is installed): discopop gives NaN once
beta h < -88.7 in float32 (exp(-beta h) = inf times sigma(beta h / tau) = 0), and one such
pair turns the batch loss into NaN; CPOTrainer's alpha gives NaN for a completion whose
summed log-prob is -150 in float32 (exp(-150) = 0, 0^-alpha = inf, inf - inf).

Expected values come from the formulas' asymptotes, derived by hand in each test.
"""

from __future__ import annotations

import math

import pytest
import torch

from naive_trl_losses import TRL_LOSSES_EXPECTED
from objective_fixtures import sequence_logps, with_grad
from preftune.objectives import compute_objective, get_objective, step_loss

DTYPES = [torch.float32, torch.float64]


def run(name, hparams, chosen, rejected, ref_chosen=None, ref_rejected=None, dtype=torch.float64):
    """One-token completions holding whole-sequence log-probs; loss and gradients."""
    policy = with_grad(sequence_logps([[v] for v in chosen], [[v] for v in rejected], dtype))
    reference = None
    if ref_chosen is not None:
        reference = sequence_logps([[v] for v in ref_chosen], [[v] for v in ref_rejected], dtype)
    output = compute_objective(get_objective(name), hparams, policy, reference, nll_weight=0.0)
    loss = step_loss(output, examples_in_step=len(chosen), nll_tokens_in_step=1.0)
    grad_chosen, grad_rejected = torch.autograd.grad(loss, [policy.chosen, policy.rejected])
    return output.terms.losses.detach(), loss.detach(), grad_chosen[:, 0], grad_rejected[:, 0]


def all_finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta,tau", [(0.1, 0.05), (0.05, 0.05), (1.0, 0.05), (1.0, 1.0),
                                      (0.5, 0.3)])
def test_discopop_is_finite_over_the_whole_range(dtype, beta, tau):
    """h from -1e4 to 1e4. As beta h -> -inf the logistic branch rules: loss -> -beta h and
    d loss / d h -> -beta (the blend weight sigma(beta h / tau) and the exponential term both
    vanish, the latter as exp(beta h (1/tau - 1)) for tau < 1, as 1/(1 + e^(beta h)) -> 1
    at tau = 1). As beta h -> +inf the loss and its gradient -> 0."""
    margins = [-1e4, -3e3, -1e3, -200.0, -1.0, 0.0, 1.0, 200.0, 1e3, 1e4]
    losses, _, grad_chosen, grad_rejected = run(
        "discopop", {"beta": beta, "discopop_tau": tau}, margins, [0.0] * len(margins),
        [0.0] * len(margins), [0.0] * len(margins), dtype)
    assert all_finite(losses, grad_chosen, grad_rejected)
    n = len(margins)
    for h, loss, grad in zip(margins, losses.tolist(), grad_chosen.tolist()):
        z = beta * h
        if z <= -200:
            tail = 1.0 if tau == 1.0 else 0.0  # the exponential term's limit
            assert loss == pytest.approx(-z + tail, rel=1e-6)
            assert grad * n == pytest.approx(-beta, rel=1e-5)
        if z >= 100:
            assert loss == pytest.approx(0.0, abs=1e-30) and grad == pytest.approx(0.0, abs=1e-30)
    # The rejected side's gradient mirrors the chosen side's (the loss reads h only).
    torch.testing.assert_close(grad_rejected, -grad_chosen)


def test_discopop_matches_float64_where_both_are_finite():
    """float32 against float64 at margins where exp(-beta h) is still representable."""
    margins = [-800.0, -300.0, -20.0, 3.0, 50.0]
    zeros = [0.0] * len(margins)
    out32 = run("discopop", {"beta": 0.1}, margins, zeros, zeros, zeros, torch.float32)
    out64 = run("discopop", {"beta": 0.1}, margins, zeros, zeros, zeros, torch.float64)
    for a, b in zip(out32, out64):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.25, 1.0, -0.5])
def test_alphapo_on_summed_logps_is_finite(dtype, alpha):
    """cpo (sums) with AlphaPO's alpha: finite values and gradients. For alpha > 0 the
    rejected side reaches -80/alpha (beta e^(-alpha lp) / alpha near float32's limit); when
    the chosen one is likelier it goes to -1e4 (loss and gradient 0, far beyond the dtype);
    for alpha < 0 (reward bounded by 1/|alpha|) both go to -1e4."""
    low = -1e4 if alpha < 0 else -80.0 / alpha
    chosen = [-150.0, low, -1.0, low / 2, -10.0]
    rejected = [-151.0, -2.0, low, low / 2, -1e4]
    losses, loss, grad_chosen, grad_rejected = run("cpo", {"beta": 0.1, "alpha": alpha},
                                                   chosen, rejected, dtype=dtype)
    assert all_finite(losses, loss, grad_chosen, grad_rejected)
    if dtype == torch.float32:
        wide = run("cpo", {"beta": 0.1, "alpha": alpha}, chosen, rejected, dtype=torch.float64)
        for a, b in zip((losses, loss, grad_chosen, grad_rejected), wide):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_alphapo_hand_number_at_minus_150():
    """alpha 0.25, beta 0.1, sums -150 (chosen) and -151 (rejected): r = (1 - e^(-0.25 lp))/0.25,
    r_w - r_l = 4 (e^37.75 - e^37.5) = 4 e^37.5 (e^0.25 - 1) = 2.1636e16, so z = 2.1636e15
    and the loss -log sigma(z) underflows to exactly 0: the chosen side is far likelier.
    Swapped, the loss is -z = 2.1636e15 (the logistic tail), finite in float32."""
    margin = 4 * math.exp(37.5) * math.expm1(0.25)
    for dtype in DTYPES:
        losses, *_ = run("cpo", {"beta": 0.1, "alpha": 0.25}, [-150.0, -151.0], [-151.0, -150.0],
                         dtype=dtype)
        assert losses[0].item() == 0.0
        assert losses[1].item() == pytest.approx(0.1 * margin, rel=1e-6)


def test_trl_returns_nan_where_preftune_does_not():
    """The failures this module guards against, measured on TRL 1.16 itself."""
    pytest.importorskip("trl")
    from trl_loss_stubs import cpo_trainer_losses, dpo_trainer_loss

    # discopop: one pair with beta h = -100 among ordinary ones.
    policy = with_grad(sequence_logps([[-1.0], [-1000.0], [-2.0]], [[-2.0], [0.0], [-1.0]],
                                      torch.float32))
    reference = sequence_logps([[-1.0], [-1.0], [-1.0]], [[-1.0], [-1.0], [-1.0]], torch.float32)
    assert torch.isnan(dpo_trainer_loss("discopop", policy, reference, beta=0.1))
    ours = compute_objective(get_objective("discopop"), {"beta": 0.1}, policy, reference)
    assert all_finite(ours.terms.losses)
    # AlphaPO: completion sums of -150 in float32.
    chosen = torch.tensor([-150.0], requires_grad=True)
    rejected = torch.tensor([-151.0])
    trl_losses, *_ = cpo_trainer_losses("sigmoid", chosen, rejected, beta=0.1, alpha=0.25)
    assert torch.isnan(trl_losses).all()
    losses, *_ = run("cpo", {"beta": 0.1, "alpha": 0.25}, [-150.0], [-151.0], dtype=torch.float32)
    assert all_finite(losses)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(TRL_LOSSES_EXPECTED))
def test_every_new_objective_is_finite_at_huge_log_ratios(name, dtype):
    """Log-ratios of +-1e4 on either side, beta 1: every formula (log-sigmoids, sigmoids,
    squares, sorts) keeps finite values and gradients."""
    ratios = [-1e4, 1e4, 0.0, -1e4, 1e4]
    others = [1e4, -1e4, -1e4, -1e4, 1e4]
    hparams = {"beta": 1.0}
    objective = get_objective(name)
    policy = with_grad(sequence_logps([[v] for v in ratios], [[v] for v in others], dtype))
    zeros = [[0.0]] * len(ratios)
    reference = sequence_logps(zeros, zeros, dtype)
    labels = None if objective.paired else torch.tensor([True, False, True, False, True])
    output = compute_objective(objective, hparams, policy, reference, labels=labels)
    loss = step_loss(output, examples_in_step=len(ratios), nll_tokens_in_step=5.0)
    grads = torch.autograd.grad(loss, [policy.chosen, policy.rejected], allow_unused=True)
    assert all_finite(output.terms.losses, loss, *(g for g in grads if g is not None))
