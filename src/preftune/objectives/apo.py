"""Anchored Preference Optimization, D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts,
Kiela & Mehri 2024, "Anchored Preference Optimization and Contrastive Revisions"
(arXiv:2408.06266): each response's reward is anchored to the reference, not only the gap.

- ``apo-zero`` (Eq. 7): raise the chosen and lower the rejected likelihood, for data whose
  chosen answers beat the model's own;
- ``apo-down`` (Eq. 8): lower both, the rejected more, for chosen answers worse than the
  model's own;
- ``apo-zero-unpaired``: APO-zero on unpaired (prompt, completion, label) data, TRL's
  KTOTrainer ``loss_type="apo_zero_unpaired"``. It needs no KL reference point, so the
  mismatched completions the unpaired layout carries (for KTO) take no part in the loss.

``r = lp - ref``; ``1 - sigma(z)`` is computed as ``sigma(-z)``, exact in the tails.
Rewards are ``beta * r`` (detached).
"""

from __future__ import annotations

from typing import Mapping

import torch

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios
from preftune.objectives.hyperparameters import DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT, beta
from preftune.types import ObjectiveTerms, ReducedLogps


def apo_zero_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """APO-zero (Eq. 7): ``(1 - sigma(beta r_w)) + sigma(beta r_l)``."""
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    losses = torch.sigmoid(-beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    return ObjectiveTerms(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


def apo_down_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """APO-down (Eq. 8): ``sigma(beta r_w) + (1 - sigma(beta (r_w - r_l)))``."""
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    losses = (torch.sigmoid(beta * chosen_ratio)
              + torch.sigmoid(-beta * (chosen_ratio - rejected_ratio)))
    return ObjectiveTerms(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


def apo_zero_unpaired_loss(reduced: ReducedLogps, hparams: Mapping[str, float]
                           ) -> ObjectiveTerms:
    """APO-zero per example: ``lambda_D (1 - sigma(beta r))`` for a desirable completion,
    ``lambda_U sigma(beta r)`` for an undesirable one, ``r = lp(y) - ref(y)`` of the row's
    completion (``reduced.chosen``). ``rejected_rewards`` is the mismatched side's
    ``beta (lp - ref)``, as for kto, so the metrics read alike.
    """
    if reduced.labels is None:
        raise ValueError("apo-zero-unpaired needs labels (True = desirable) for every example")
    beta = float(hparams["beta"])
    completion_ratio, mismatched_ratio = log_ratios(reduced)
    losses = torch.where(
        reduced.labels.to(torch.bool),
        float(hparams["desirable_weight"]) * torch.sigmoid(-beta * completion_ratio),
        float(hparams["undesirable_weight"]) * torch.sigmoid(beta * completion_ratio))
    return ObjectiveTerms(losses=losses, chosen_rewards=(beta * completion_ratio).detach(),
                          rejected_rewards=(beta * mismatched_ratio).detach())


APO_PAPER = ("D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela & Mehri 2024, "
             "Anchored Preference Optimization and Contrastive Revisions: Addressing "
             "Underspecification in Alignment, arXiv:2408.06266")

APO_ZERO = register(Objective(
    name="apo-zero", paper=APO_PAPER,
    equation="(1 - sigma(beta r_w)) + sigma(beta r_l), r = lp - ref",
    needs_reference=True, paired=True, reduction="sum", loss_fn=apo_zero_loss,
    hyperparameters=(beta(0.1),),
))

APO_DOWN = register(Objective(
    name="apo-down", paper=APO_PAPER,
    equation="sigma(beta r_w) + (1 - sigma(beta (r_w - r_l))), r = lp - ref",
    needs_reference=True, paired=True, reduction="sum", loss_fn=apo_down_loss,
    hyperparameters=(beta(0.1),),
))

APO_ZERO_UNPAIRED = register(Objective(
    name="apo-zero-unpaired", paper=APO_PAPER + " (unpaired form, TRL's KTOTrainer)",
    equation="lambda_D (1 - sigma(beta r)) if desirable else lambda_U sigma(beta r), "
             "r = lp - ref",
    needs_reference=True, paired=False, reduction="sum", loss_fn=apo_zero_unpaired_loss,
    hyperparameters=(
        beta(0.1),
        DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT),
))
