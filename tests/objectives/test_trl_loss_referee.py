"""TRL 1.16 as referee: its DPOTrainer, CPOTrainer and KTOTrainer loss code (run on the same
log-probs through trl_loss_stubs.py) against preftune's objectives, values and gradients
w.r.t. every per-token policy log-prob, in float64. Skipped when trl is not installed.

BCO is the one departure: TRL 1.16 dropped the paper's reward shift delta, so preftune's
loss equals TRL's on a reference shifted by delta / beta (which moves each reward by -delta).
"""

from __future__ import annotations

import pytest
import torch

from objective_fixtures import random_batch, with_grad
from preftune.objectives import compute_objective, get_objective, step_loss
from preftune.objectives.resolve import resolve_hyperparameters
from preftune.types import SequenceLogps

pytest.importorskip("trl")
from trl_loss_stubs import cpo_trainer_losses, dpo_trainer_loss, kto_trainer_loss  # noqa: E402

CHOSEN_LENGTHS, REJECTED_LENGTHS = (5, 2, 3, 6, 1, 4), (3, 7, 1, 2, 5, 5)

# TRL loss_type: (hyperparameters as both spell them). Margins of random_batch are a few
# nats, inside the range where TRL's own formulas are finite.
DPO_CASES = [
    ("robust", {"beta": 0.3, "label_smoothing": 0.2}),
    ("exo_pair", {"beta": 0.4, "label_smoothing": 0.1}),
    ("nca_pair", {"beta": 0.7}),
    ("sppo_hard", {"beta": 0.5}),
    ("aot", {"beta": 0.5, "label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.5}),
    ("apo_zero", {"beta": 0.8}),
    ("apo_down", {"beta": 0.8}),
    ("discopop", {"beta": 0.5, "discopop_tau": 0.3}),
    ("discopop", {"beta": 0.1, "discopop_tau": 0.05}),
    ("sigmoid_norm", {"beta": 2.0}),
]


def batch(seed: int):
    return random_batch(seed, CHOSEN_LENGTHS, REJECTED_LENGTHS, chosen_width=6,
                        rejected_width=8)


def ours(name: str, hparams: dict, policy: SequenceLogps, reference, labels=None):
    output = compute_objective(get_objective(name), hparams, policy, reference, labels=labels,
                               nll_weight=0.0)
    return output, step_loss(output, examples_in_step=len(output.terms.losses),
                             nll_tokens_in_step=1.0)


def grads(loss, policy: SequenceLogps):
    return torch.autograd.grad(loss, [policy.chosen, policy.rejected], allow_unused=True)


def assert_same(loss, trl_loss, policy, trl_policy, rtol=1e-12):
    assert loss.item() == pytest.approx(trl_loss.item(), rel=rtol, abs=1e-14)
    for mine, theirs in zip(grads(loss, policy), grads(trl_loss, trl_policy)):
        torch.testing.assert_close(mine, theirs, rtol=max(rtol, 1e-10), atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_type,hparams", DPO_CASES)
def test_dpo_trainer_loss_types(loss_type, hparams, seed):
    b = batch(seed)
    policy, trl_policy = with_grad(b.policy), with_grad(b.policy)
    _, loss = ours(loss_type, hparams, policy, b.reference)
    trl_loss = dpo_trainer_loss(loss_type, trl_policy, b.reference, **hparams)
    # TRL builds exo_pair's eps as a float32 tensor, so its log(1 - eps) and log(eps) carry
    # float32 rounding (relative 6e-8) even in a float64 run.
    rtol = 1e-6 if loss_type == "exo_pair" else 1e-12
    assert_same(loss, trl_loss, policy, trl_policy, rtol=rtol)


def shifted(reference: SequenceLogps, by: float) -> SequenceLogps:
    """The reference with ``by`` added to each sequence's first token (so to its sum)."""
    first = torch.zeros_like(reference.chosen)
    first[:, 0] = by
    first_rejected = torch.zeros_like(reference.rejected)
    first_rejected[:, 0] = by
    return SequenceLogps(reference.chosen + first, reference.chosen_mask,
                         reference.rejected + first_rejected, reference.rejected_mask)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.6])
def test_bco_pair_is_trl_with_the_papers_reward_shift(seed, beta):
    b = batch(seed)
    policy, trl_policy = with_grad(b.policy), with_grad(b.policy)
    output, loss = ours("bco_pair", {"beta": beta}, policy, b.reference)
    delta = float(output.terms.metrics["delta"][0])
    assert delta != pytest.approx(0.0, abs=1e-3)  # the shift acts on these inputs
    trl_loss = dpo_trainer_loss("bco_pair", trl_policy, shifted(b.reference, delta / beta),
                                beta=beta)
    assert_same(loss, trl_loss, policy, trl_policy)
    # TRL 1.16 on the unshifted reference is a different loss (its departure from the paper).
    unshifted = dpo_trainer_loss("bco_pair", with_grad(b.policy), b.reference, beta=beta)
    assert unshifted.item() != pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,loss_type,hparams", [
    ("cpo", "sigmoid", {"beta": 0.2, "alpha": 0.25, "label_smoothing": 0.1}),
    ("cpo", "sigmoid", {"beta": 0.1, "alpha": -0.5}),
    ("simpo", "simpo", {"beta": 2.5, "simpo_gamma": 0.1, "alpha": 0.25}),
    ("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 1.0, "alpha": -1.0, "label_smoothing": 0.05}),
])
def test_cpo_trainer_alpha(name, loss_type, hparams, seed):
    """CPOTrainer.cpo_loss on the reduced log-probs (sums for cpo, means for simpo)."""
    b = batch(seed)
    objective = get_objective(name)
    output = compute_objective(objective, hparams, with_grad(b.policy), nll_weight=0.0)
    chosen = output.reduced.chosen.detach().requires_grad_(True)
    rejected = output.reduced.rejected.detach().requires_grad_(True)
    reduced = type(output.reduced)(chosen, rejected, output.reduced.chosen_lengths,
                                   output.reduced.rejected_lengths)
    # simpo_gamma is TRL's spelling of gamma: resolved as the config resolves it.
    terms = objective(reduced, resolve_hyperparameters(objective, hparams))
    trl_chosen = chosen.detach().requires_grad_(True)
    trl_rejected = rejected.detach().requires_grad_(True)
    trl_losses, trl_chosen_rewards, trl_rejected_rewards = cpo_trainer_losses(
        loss_type, trl_chosen, trl_rejected, **hparams)
    torch.testing.assert_close(terms.losses, trl_losses, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(terms.chosen_rewards, trl_chosen_rewards, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(terms.rejected_rewards, trl_rejected_rewards, rtol=1e-12,
                               atol=1e-14)
    mine = torch.autograd.grad(terms.losses.sum(), [chosen, rejected])
    theirs = torch.autograd.grad(trl_losses.sum(), [trl_chosen, trl_rejected])
    for a, b_ in zip(mine, theirs):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("hparams", [{"beta": 0.1},
                                     {"beta": 0.5, "desirable_weight": 1.3,
                                      "undesirable_weight": 0.6}])
def test_kto_trainer_apo_zero_unpaired(hparams, seed):
    b = batch(seed)
    labels = torch.tensor([True, False, True, True, False, False])
    policy = with_grad(b.policy)
    _, loss = ours("apo_zero_unpaired", hparams, policy, b.reference, labels=labels)
    trl_logps = b.policy.chosen.detach().clone().requires_grad_(True)
    trl_loss = kto_trainer_loss("apo_zero_unpaired", trl_logps, b.policy.chosen_mask,
                                b.reference.chosen, labels, **hparams)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-12)
    (mine,) = torch.autograd.grad(loss, [policy.chosen])
    (theirs,) = torch.autograd.grad(trl_loss, [trl_logps])
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-14)
