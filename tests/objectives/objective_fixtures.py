"""Tensor builders shared by the objective tests (a plain module, not a conftest, so the
test directories need no __init__.py and cannot collide on the name ``conftest``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from preftune.types import SequenceLogps

# Written into masked positions: any leak of padding into a result shows up as a mismatch.
PAD_GARBAGE = 7.25


def padded(rows: list[list[float]], width: Optional[int] = None,
           dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[batch, width]`` values (garbage in the padding) and bool mask."""
    width = width or max(len(row) for row in rows)
    values = torch.full((len(rows), width), PAD_GARBAGE, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        values[i, :len(row)] = torch.tensor(row, dtype=dtype)
        mask[i, :len(row)] = True
    return values, mask


def sequence_logps(chosen: list[list[float]], rejected: list[list[float]],
                   dtype: torch.dtype = torch.float64) -> SequenceLogps:
    chosen_values, chosen_mask = padded(chosen, dtype=dtype)
    rejected_values, rejected_mask = padded(rejected, dtype=dtype)
    return SequenceLogps(chosen_values, chosen_mask, rejected_values, rejected_mask)


@dataclass
class RandomBatch:
    """Policy and reference per-token log-probs with ragged, completion-aligned masks."""

    policy: SequenceLogps
    reference: SequenceLogps
    labels: torch.Tensor
    example_ids: list[int]

    def to(self, dtype: torch.dtype) -> "RandomBatch":
        def cast(logps: SequenceLogps) -> SequenceLogps:
            return SequenceLogps(logps.chosen.to(dtype), logps.chosen_mask,
                                 logps.rejected.to(dtype), logps.rejected_mask)
        return RandomBatch(cast(self.policy), cast(self.reference), self.labels,
                           self.example_ids)


def random_batch(seed: int, chosen_lengths=(5, 2, 3), rejected_lengths=(3, 7, 1),
                 chosen_width: int = 5, rejected_width: int = 7) -> RandomBatch:
    """Batch 3, chosen width 5, rejected width 7 by default. Row 0 has the longer chosen,
    row 1 the longer rejected, row 2 a one-token rejected; log-probs in (-2.5, -0.05)."""
    generator = torch.Generator().manual_seed(seed)

    def side(lengths, width):
        values = -(0.05 + 2.45 * torch.rand(len(lengths), width, generator=generator,
                                            dtype=torch.float64))
        mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
        return values.masked_fill(~mask, PAD_GARBAGE), mask

    policy_chosen, chosen_mask = side(chosen_lengths, chosen_width)
    policy_rejected, rejected_mask = side(rejected_lengths, rejected_width)
    ref_chosen, _ = side(chosen_lengths, chosen_width)
    ref_rejected, _ = side(rejected_lengths, rejected_width)
    batch_size = len(chosen_lengths)
    labels = torch.tensor([i % 2 == 0 for i in range(batch_size)])  # both classes present
    return RandomBatch(
        policy=SequenceLogps(policy_chosen, chosen_mask, policy_rejected, rejected_mask),
        reference=SequenceLogps(ref_chosen, chosen_mask, ref_rejected, rejected_mask),
        labels=labels,
        example_ids=[11 + 31 * i for i in range(batch_size)],
    )


def with_grad(policy: SequenceLogps) -> SequenceLogps:
    """A copy whose per-token log-probs are fresh leaves that require grad."""
    return SequenceLogps(policy.chosen.detach().clone().requires_grad_(True), policy.chosen_mask,
                         policy.rejected.detach().clone().requires_grad_(True),
                         policy.rejected_mask)


def grads_or_zeros(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``loss``; an input with no path to it (KTO's mismatched side, SFT's
    rejected side) gets zeros, which is what its gradient is."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def assert_gradients_match(grads: tuple, differences: tuple, batch) -> None:
    """Autograd's gradients of the chosen and rejected log-probs against central finite
    differences of a float64 naive loss; padding never receives gradient."""
    for grad, difference, mask in zip(grads, differences,
                                      (batch.policy.chosen_mask, batch.policy.rejected_mask)):
        torch.testing.assert_close(grad, torch.tensor(difference, dtype=torch.float64),
                                   rtol=1e-6, atol=1e-8)
        assert not grad[~mask].any()


def assert_float32_agrees(run, name, hparams, nll_weight, batch) -> None:
    """The usual training dtype gives the float64 numbers to float32 accuracy; ``run`` is
    the test file's ``(name, hparams, nll_weight, batch) -> (objective, output, loss, grads)``."""
    _, out64, loss64, _ = run(name, hparams, nll_weight, batch)
    _, out32, loss32, _ = run(name, hparams, nll_weight, batch.to(torch.float32))
    assert out32.terms.losses.dtype == torch.float32
    torch.testing.assert_close(out32.terms.losses.double(), out64.terms.losses.detach(),
                               rtol=1e-4, atol=1e-5)
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-4, abs=1e-5)
