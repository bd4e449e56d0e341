"""Objectives that push the reference-relative margin h towards a target instead of through a
sigmoid: IPO (squared distance to 1/(2 beta)) and hinge (SLiC / RSO).

Rewards are ``beta * (lp - ref)``, reduced as the method reduces (the DPO-style implicit
reward, as TRL logs it for these losses).
"""

from __future__ import annotations

from typing import Mapping

import torch

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios, positive
from preftune.objectives.hyperparameters import beta
from preftune.types import ObjectiveTerms, ReducedLogps


def ipo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """IPO, Azar et al. 2023 (arXiv:2310.12036), Eq. 17: ``(h - 1/(2 beta))^2``, beta being
    the paper's tau. Registered with the mean reduction (per the IPO paper; TRL also
    averages log-probs for ``loss_type="ipo"``), which keeps h on the scale of
    1/(2 beta) whatever the completion lengths."""
    beta = positive(hparams, "beta")
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    margins = chosen_ratio - rejected_ratio
    return ObjectiveTerms(
        losses=(margins - 1.0 / (2.0 * beta)) ** 2,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


def hinge_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Hinge loss of SLiC-HF (Zhao et al. 2023, arXiv:2305.10425) in the reference-relative
    form of RSO (Liu et al. 2023, arXiv:2309.06657): ``max(0, 1 - beta h)``.

    TRL's CPO trainer offers a reference-free hinge; this one uses the reference, as TRL's
    DPO trainer and the RSO paper do.
    """
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    margins = chosen_ratio - rejected_ratio
    return ObjectiveTerms(
        losses=torch.relu(1.0 - beta * margins),
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


IPO = register(Objective(
    name="ipo",
    paper="Azar, Rowland, Piot, Guo, Calandriello, Valko & Munos 2023, A General Theoretical "
          "Paradigm to Understand Learning from Human Preferences, arXiv:2310.12036",
    equation="(h - 1/(2 beta))^2, h on mean log-probs: [avg(y_w) - ref_avg(y_w)] - "
             "[avg(y_l) - ref_avg(y_l)]",
    needs_reference=True, paired=True, reduction="mean", loss_fn=ipo_loss,
    hyperparameters=(beta(0.1, "tau (beta): the margin h is pulled towards 1/(2 beta)"),),
))

HINGE = register(Objective(
    name="hinge",
    paper="Zhao, Joshi, Liu, Khalman, Saleh & Liu 2023, SLiC-HF, arXiv:2305.10425; Liu, Zhao, "
          "Joshi, Khalman, Saleh, Liu & Liu 2023, RSO, arXiv:2309.06657",
    equation="max(0, 1 - beta h), h = [lp(y_w) - ref(y_w)] - [lp(y_l) - ref(y_l)]",
    needs_reference=True, paired=True, reduction="sum", loss_fn=hinge_loss,
    hyperparameters=(beta(0.1, "inverse margin beta: pairs with beta h >= 1 add no loss"),),
))
