"""KTO, Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, "KTO: Model Alignment as Prospect
Theoretic Optimization" (arXiv:2402.01306): paired ("kto-pair", as TRL's former
``loss_type="kto_pair"``) and unpaired ("kto", as TRL's KTOTrainer).

The reference point z is a batch estimate of KL(pi || ref), clamped at 0 and detached, as the
paper prescribes (no gradient flows through it). It is estimated over the examples of this
call, i.e. per micro-batch: with gradient accumulation the loss is therefore not exactly
that of one large batch. TRL does the same per micro-batch (it also averages across ranks,
which a pure function cannot do).
"""

from __future__ import annotations

from typing import Mapping

import torch

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios
from preftune.objectives.hyperparameters import DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT, beta
from preftune.types import ObjectiveTerms, ReducedLogps


def batch_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """The reference point: batch mean of ``lp - ref``, clamped at 0, no gradient."""
    return log_ratio.detach().mean().clamp(min=0)


def kto_pair_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Paired KTO: ``0.5 [(1 - sigma(beta (r_w - z_l))) + (1 - sigma(beta (z_w - r_l)))]``.

    ``r = lp - ref``; ``z_w``/``z_l`` are the batch KL estimates of the chosen/rejected halves.
    As in TRL, each half's reference point comes from the *other* half. The factor 0.5 makes
    the mean over pairs equal TRL's mean over its 2B concatenated terms.
    """
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    chosen_kl, rejected_kl = batch_kl(chosen_ratio), batch_kl(rejected_ratio)
    desirable = 1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl))
    undesirable = 1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))
    return ObjectiveTerms(
        losses=0.5 * (desirable + undesirable),
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


def kto_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Unpaired KTO (the paper's loss, with TRL's names for the lambdas):

        desirable y:   lambda_D (1 - sigma(beta (r - z0)))
        undesirable y: lambda_U (1 - sigma(beta (z0 - r)))

    ``r = lp(y) - ref(y)`` for the row's completion (``reduced.chosen``); z0 is the batch KL
    estimate from the mismatched completions (``reduced.rejected``: another row's completion
    under this row's prompt), which serve no other purpose. ``chosen_rewards`` is ``beta r``
    for every row (the metrics split it by label); ``rejected_rewards`` is the mismatched
    side's ``beta (lp - ref)``. ``metrics["kl"]`` repeats z0 per row so it averages exactly.
    """
    if reduced.labels is None:
        raise ValueError("kto needs labels (True = desirable) for every example")
    beta = float(hparams["beta"])
    completion_ratio, mismatched_ratio = log_ratios(reduced)
    kl = batch_kl(mismatched_ratio)
    desirable = reduced.labels.to(torch.bool)
    losses = torch.where(
        desirable,
        float(hparams["desirable_weight"]) * (1 - torch.sigmoid(beta * (completion_ratio - kl))),
        float(hparams["undesirable_weight"]) * (1 - torch.sigmoid(beta * (kl - completion_ratio))),
    )
    return ObjectiveTerms(
        losses=losses,
        chosen_rewards=(beta * completion_ratio).detach(),
        rejected_rewards=(beta * mismatched_ratio).detach(),
        metrics={"kl": kl.expand_as(losses)},
    )


KTO_PAIR = register(Objective(
    name="kto-pair",
    paper="Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, KTO: Model Alignment as Prospect "
          "Theoretic Optimization, arXiv:2402.01306 (paired form of TRL's kto_pair)",
    equation="0.5 [(1 - sigma(beta (r_w - z_l))) + (1 - sigma(beta (z_w - r_l)))], r = lp - ref, "
             "z = max(0, batch mean of r), detached",
    needs_reference=True, paired=True, reduction="sum", loss_fn=kto_pair_loss,
    hyperparameters=(beta(0.1),), batch_coupled=True,
))

KTO = register(Objective(
    name="kto",
    paper="Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, KTO: Model Alignment as Prospect "
          "Theoretic Optimization, arXiv:2402.01306",
    equation="lambda_D (1 - sigma(beta (r - z0))) if desirable else "
             "lambda_U (1 - sigma(beta (z0 - r))), r = lp - ref, "
             "z0 = max(0, batch mean of lp - ref over mismatched completions), detached",
    needs_reference=True, paired=False, reduction="sum", loss_fn=kto_loss,
    hyperparameters=(
        beta(0.1),
        DESIRABLE_WEIGHT, UNDESIRABLE_WEIGHT),
    batch_coupled=True,
))
