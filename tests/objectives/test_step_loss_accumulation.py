"""Gradient accumulation is exact: micro-batches' step losses sum to the one-batch loss.

Each micro-batch is cut to its own longest completion (as a collator would pad it), so the
check also covers padding widths that differ between micro-batches.
"""

from __future__ import annotations

import pytest
import torch

from objective_fixtures import random_batch
from preftune.objectives import REGISTRY, compute_objective, get_objective, step_loss
from preftune.types import SequenceLogps

CHOSEN_LENGTHS = (5, 2, 3, 6, 1, 4, 6, 2)
REJECTED_LENGTHS = (3, 7, 1, 2, 5, 5, 4, 8)

# KTO's reference point, BCO's reward shift and AOT's sort are over the micro-batch by
# design (Objective.batch_coupled).
INVARIANT = sorted(name for name, objective in REGISTRY.items() if not objective.batch_coupled)


def accumulated(name: str, micro_batch_size: int):
    """Sum of step_loss over micro-batches, and the gradient w.r.t. the full tensors."""
    batch = random_batch(0, CHOSEN_LENGTHS, REJECTED_LENGTHS, chosen_width=6, rejected_width=8)
    objective = get_objective(name)
    chosen = batch.policy.chosen.clone().requires_grad_(True)
    rejected = batch.policy.rejected.clone().requires_grad_(True)
    total_examples = len(CHOSEN_LENGTHS)
    total_nll_tokens = float(batch.policy.chosen_mask.sum())
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, total_examples, micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        chosen_width = int(batch.policy.chosen_mask[rows].sum(-1).max())
        rejected_width = int(batch.policy.rejected_mask[rows].sum(-1).max())

        def cut(logps: SequenceLogps, chosen_values, rejected_values) -> SequenceLogps:
            return SequenceLogps(chosen_values[rows, :chosen_width],
                                 logps.chosen_mask[rows, :chosen_width],
                                 rejected_values[rows, :rejected_width],
                                 logps.rejected_mask[rows, :rejected_width])

        policy = cut(batch.policy, chosen, rejected)
        reference = cut(batch.reference, batch.reference.chosen, batch.reference.rejected)
        output = compute_objective(objective, {}, policy,
                                   reference if objective.needs_reference else None,
                                   example_ids=batch.example_ids[rows], seed=1, step=2,
                                   labels=None if objective.paired else batch.labels[rows])
        total = total + step_loss(output, examples_in_step=total_examples,
                                  nll_tokens_in_step=total_nll_tokens)
    grad_chosen, grad_rejected = torch.autograd.grad(total, [chosen, rejected], allow_unused=True)
    if grad_rejected is None:  # sft: the rejected side takes no part in the loss
        grad_rejected = torch.zeros_like(rejected)
    return total, grad_chosen, grad_rejected


@pytest.mark.parametrize("micro_batch_size", [4, 1])
def test_cpo_simpo_accumulation_equals_one_batch(micro_batch_size):
    """CPO-SimPO has both terms: a per-example mean and a per-step token mean (NLL)."""
    whole = accumulated("cpo-simpo", 8)
    split = accumulated("cpo-simpo", micro_batch_size)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", INVARIANT)
def test_every_batch_independent_objective_accumulates_exactly(name):
    whole = accumulated(name, 8)
    for micro_batch_size in (4, 1):
        for a, b in zip(whole, accumulated(name, micro_batch_size)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_accumulated_nll_is_a_token_mean_not_a_mean_of_micro_batch_means():
    """Guard against normalising the NLL per micro-batch: with 8 x 1 micro-batches that
    would weight a 1-token completion like a 6-token one and change the loss."""
    whole, *_ = accumulated("sft", 8)
    batch = random_batch(0, CHOSEN_LENGTHS, REJECTED_LENGTHS, chosen_width=6, rejected_width=8)
    mask = batch.policy.chosen_mask
    per_row_means = -(batch.policy.chosen * mask).sum(-1) / mask.sum(-1)
    token_mean = -(batch.policy.chosen * mask).sum() / mask.sum()
    assert whole.item() == pytest.approx(token_mean.item(), rel=1e-12)
    assert whole.item() != pytest.approx(per_row_means.mean().item(), rel=1e-3)
