"""Small pieces the objective formulas share; each objective file only states its formula."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from preftune.types import ReducedLogps


def log_ratios(reduced: ReducedLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """``lp - ref`` for the chosen and rejected sequences (already reduced), or f-DPO's
    scores of them when an ``f_divergence_type`` other than reverse_kl set them."""
    if reduced.ref_chosen is None or reduced.ref_rejected is None:
        # compute_objective checks this too; the message here helps when a formula is
        # called directly (tests, notebooks).
        raise ValueError("this objective needs reference log-probs (ref_chosen/ref_rejected)")
    if reduced.chosen_scores is not None and reduced.rejected_scores is not None:
        # f-DPO: the divergence's f'-score takes the log-ratio's place (weighting.py).
        return reduced.chosen_scores, reduced.rejected_scores
    return reduced.chosen - reduced.ref_chosen, reduced.rejected - reduced.ref_rejected


def smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1 - eps) log sigma(z) - eps log sigma(-z)``: the conservative DPO (cDPO) loss.

    eps is the assumed probability that a preference label is flipped (Mitchell 2023, "A
    note on DPO with noisy preferences"); eps = 0 is the plain ``-log sigma(z)``. Above 0.5
    the labels would be believed wrong more often than right, so that is refused.
    """
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {eps}")
    losses = -F.logsigmoid(logits)
    if eps:
        # Skipped at eps = 0 so the plain loss is computed exactly as the papers write it.
        losses = (1.0 - eps) * losses - eps * F.logsigmoid(-logits)
    return losses


def positive(hparams: Mapping[str, float], name: str) -> float:
    """Read a hyperparameter the formula divides by, refusing zero or negative values."""
    value = float(hparams[name])
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
