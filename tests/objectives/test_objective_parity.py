"""Every objective, through compute_objective + step_loss, against the naive float64
reference in naive_objectives.py: per-example losses, rewards, metrics, the step loss, and
its gradient w.r.t. every per-token policy log-prob (padding included, where it must be 0).

Inputs: batch 3, chosen width 5, rejected width 7, ragged masks, garbage in the padding.
"""

from __future__ import annotations

import pytest
import torch

from naive_objectives import PlainBatch, finite_difference, naive_step_loss, naive_terms
from naive_trl_losses import TRL_LOSSES_EXPECTED
from objective_fixtures import (assert_float32_agrees, assert_gradients_match, grads_or_zeros,
                                random_batch, with_grad)
from preftune.forward.reduction import sampo_keep_masks
from preftune.objectives import REGISTRY, compute_objective, example_metrics, get_objective, step_loss

SEED, STEP = 3, 5

# (method, hyperparameters, nll_weight override): defaults first, then non-default values
# (every hyperparameter moved) so a formula that ignores one would fail.
CASES = [
    ("dpo", {}, None),
    ("dpo", {"beta": 0.3, "label_smoothing": 0.2}, None),
    ("dpo", {"beta": 0.2}, 0.5),  # an NLL term on a method that has none by default
    ("rdpo", {}, None),
    ("rdpo", {"beta": 0.2, "alpha": 0.3, "label_smoothing": 0.1}, None),
    ("sampo", {}, None),
    ("sampo", {"beta": 0.5, "label_smoothing": 0.15}, None),
    ("cpo", {}, None),
    ("cpo", {"beta": 0.2, "label_smoothing": 0.1}, 0.3),
    ("simpo", {}, None),
    ("simpo", {"beta": 2.5, "gamma": 1.375, "label_smoothing": 0.05}, None),
    ("cpo-simpo", {}, None),
    ("cpo-simpo", {"beta": 3.0, "gamma": 0.5}, 0.2),
    ("ipo", {}, None),
    ("ipo", {"beta": 0.5}, None),
    ("hinge", {}, None),
    ("hinge", {"beta": 1.0}, None),  # some rows past the hinge (zero loss, zero gradient)
    ("kto-pair", {}, None),
    ("kto-pair", {"beta": 0.5}, None),
    ("kto", {}, None),
    ("kto", {"beta": 0.5, "desirable_weight": 1.33, "undesirable_weight": 0.7}, 0.25),
    ("orpo", {}, None),
    ("orpo", {"beta": 0.25}, 0.5),
    ("sft", {}, None),
]


def test_cases_cover_every_objective():
    # TRL 1.16's other loss types are checked the same way in test_trl_losses.py.
    assert {name for name, _, _ in CASES} | set(TRL_LOSSES_EXPECTED) == set(REGISTRY)


def run_objective(name, hparams, nll_weight, batch):
    objective = get_objective(name)
    policy = with_grad(batch.policy)
    output = compute_objective(
        objective, hparams, policy, batch.reference if objective.needs_reference else None,
        example_ids=batch.example_ids, seed=SEED, step=STEP,
        labels=None if objective.paired else batch.labels, nll_weight=nll_weight)
    loss = step_loss(output, examples_in_step=len(batch.example_ids),
                     nll_tokens_in_step=float(output.nll_tokens))
    return objective, output, loss, grads_or_zeros(loss, [policy.chosen, policy.rejected])


def plain(batch, objective) -> PlainBatch:
    keep_chosen, keep_rejected = batch.policy.chosen_mask, batch.policy.rejected_mask
    if objective.reduction == "sampo":
        # The draw itself is tested in test_reduce_logps.py; here the naive sums use the
        # positions it drew.
        keep_chosen, keep_rejected = sampo_keep_masks(keep_chosen, keep_rejected,
                                                      batch.example_ids, SEED, STEP)
    return PlainBatch(
        chosen=batch.policy.chosen.tolist(), rejected=batch.policy.rejected.tolist(),
        ref_chosen=batch.reference.chosen.tolist(), ref_rejected=batch.reference.rejected.tolist(),
        chosen_mask=batch.policy.chosen_mask.tolist(),
        rejected_mask=batch.policy.rejected_mask.tolist(),
        chosen_keep=keep_chosen.tolist(), rejected_keep=keep_rejected.tolist(),
        labels=None if objective.paired else batch.labels.tolist(),
    )


def full_hparams(objective, hparams):
    return {**objective.defaults, **hparams}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_values_match_naive_reference(name, hparams, nll_weight, seed):
    batch = random_batch(seed)
    objective, output, loss, _ = run_objective(name, hparams, nll_weight, batch)
    expected = naive_terms(name, plain(batch, objective), full_hparams(objective, hparams))
    terms = output.terms

    def close(actual, wanted):
        torch.testing.assert_close(actual.detach(), torch.tensor(wanted, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)

    close(terms.losses, expected.losses)
    close(terms.chosen_rewards, expected.chosen_rewards)
    close(terms.rejected_rewards, expected.rejected_rewards)
    assert set(terms.metrics) == set(expected.metrics)
    for key, values in expected.metrics.items():
        close(terms.metrics[key], values)
    weight = objective.nll_weight if nll_weight is None else nll_weight
    wanted_loss = naive_step_loss(name, plain(batch, objective),
                                  full_hparams(objective, hparams), weight)
    assert loss.item() == pytest.approx(wanted_loss, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_gradients_match_finite_differences(name, hparams, nll_weight, seed):
    batch = random_batch(seed)
    objective, _, _, (grad_chosen, grad_rejected) = run_objective(name, hparams, nll_weight,
                                                                  batch)
    reference = plain(batch, objective)
    hp = full_hparams(objective, hparams)
    weight = objective.nll_weight if nll_weight is None else nll_weight
    # Batch statistics the objective detaches are frozen at their unperturbed values.
    frozen = naive_terms(name, reference, hp).frozen or None
    fd_chosen, fd_rejected = finite_difference(
        lambda b: naive_step_loss(name, b, hp, weight, frozen), reference)
    assert_gradients_match((grad_chosen, grad_rejected), (fd_chosen, fd_rejected), batch)


@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_float32_agrees_with_float64(name, hparams, nll_weight):
    assert_float32_agrees(run_objective, name, hparams, nll_weight, random_batch(0))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_example_metrics_are_finite(name):
    batch = random_batch(2)
    _, output, _, _ = run_objective(name, {}, None, batch)
    metrics = example_metrics(output)
    for key, (total, count) in metrics.items():
        assert torch.isfinite(torch.as_tensor(total)).all(), key
        assert count > 0 or key.startswith(("rewards/", "logps/", "lengths/")), key
    if name == "kto":
        assert "kl" in metrics
    if name == "orpo":
        assert {"log_odds_ratio", "log_odds_chosen"} <= set(metrics)
