"""AOT, Melnyk, Mroueh, Belgodere, Rigotti, Nitsure, Yurochkin, Greenewald, Navratil & Ross
2024, "Distributional Preference Alignment of LLMs via Optimal Transport"
(arXiv:2406.05882): instead of asking each pair's chosen reward to beat its rejected one,
ask the *distribution* of chosen rewards to dominate that of rejected ones (first-order
stochastic dominance). In one dimension the optimal transport plan between two empirical
distributions matches them by rank, so the violation is measured on sorted batches:

- ``aot`` (paired): sort the policy's margins ``lp(y_w) - lp(y_l)`` and, separately, the
  reference's ``ref(y_w) - ref(y_l)``; the k-th loss is the smoothed sigmoid loss of
  ``beta`` times (k-th policy margin - k-th reference margin);
- ``aot-unpaired``: sort ``r_w = lp(y_w) - ref(y_w)`` and ``r_l = lp(y_l) - ref(y_l)``
  separately; the k-th loss is that of ``beta (r_w[k] - r_l[k])``.

The k-th entry of ``losses`` therefore belongs to rank k, not to example k; only their sum
has meaning (which is all the step loss reads). The sort is over this call's examples: one
micro-batch on one process, as in TRL (``batch_coupled``), so gradient accumulation and
data parallelism change the plan. Sorting is differentiable almost everywhere (it permutes
values); the loss is continuous at ties. Rewards are ``beta (lp - ref)`` per example.
"""

from __future__ import annotations

from typing import Mapping

import torch

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios, smoothed_sigmoid_loss
from preftune.objectives.hyperparameters import LABEL_SMOOTHING, beta
from preftune.types import ObjectiveTerms, ReducedLogps


def _sorted_gap(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Rank-matched differences: k-th smallest of ``upper`` minus k-th smallest of ``lower``."""
    return torch.sort(upper, dim=0).values - torch.sort(lower, dim=0).values


def aot_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Paired AOT: ``smoothed(beta [sort(lp_w - lp_l)_k - sort(ref_w - ref_l)_k])``."""
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    gap = _sorted_gap(reduced.chosen - reduced.rejected, reduced.ref_chosen - reduced.ref_rejected)
    return ObjectiveTerms(losses=smoothed_sigmoid_loss(beta * gap, hparams["label_smoothing"]),
                          chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


def aot_unpaired_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Unpaired AOT: ``smoothed(beta [sort(r_w)_k - sort(r_l)_k])``, r = lp - ref."""
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    gap = _sorted_gap(chosen_ratio, rejected_ratio)
    return ObjectiveTerms(losses=smoothed_sigmoid_loss(beta * gap, hparams["label_smoothing"]),
                          chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


AOT_PAPER = ("Melnyk, Mroueh, Belgodere, Rigotti, Nitsure, Yurochkin, Greenewald, Navratil "
             "& Ross 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
             "arXiv:2406.05882")

AOT = register(Objective(
    name="aot", paper=AOT_PAPER,
    equation="rank k of the micro-batch: -log sigma(beta [sort(lp_w - lp_l)_k - "
             "sort(ref_w - ref_l)_k]) (cDPO smoothing eps)",
    needs_reference=True, paired=True, reduction="sum", loss_fn=aot_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING), batch_coupled=True,
))

AOT_UNPAIRED = register(Objective(
    name="aot-unpaired", paper=AOT_PAPER + " (unpaired form)",
    equation="rank k of the micro-batch: -log sigma(beta [sort(r_w)_k - sort(r_l)_k]), "
             "r = lp - ref (cDPO smoothing eps)",
    needs_reference=True, paired=True, reduction="sum", loss_fn=aot_unpaired_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING), batch_coupled=True,
))
