"""ORPO, Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
Model" (arXiv:2403.07691), Eqs. 6-7:

    L = NLL(y_w) - lambda log sigma(log odds(y_w) - log odds(y_l)),
    odds(y) = p / (1 - p),  p = exp(avg(y)).

The NLL term is added by compute.py (``nll_weight`` 1.0); ``beta`` is the paper's lambda,
as in TRL's ORPOConfig.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from preftune.objectives.base import Objective, register
from preftune.objectives.hyperparameters import beta
from preftune.types import ObjectiveTerms, ReducedLogps

LOG_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x <= 0, accurate over the whole range (Maechler 2012,
    "Accurately Computing log(1 - exp(-|a|))"): ``log(-expm1(x))`` near 0, where
    ``1 - exp(x)`` would cancel, and ``log1p(-exp(x))`` below -ln 2, where ``-expm1(x)``
    rounds to 1 and loses the tail.

    Each branch only sees inputs from its own range (the double ``where``), so the branch
    that is not selected cannot put inf or NaN into the gradient. x = 0 (p = 1 in floating
    point) is moved to the smallest normal negative number: log(1 - p) is then about -87 in
    float32 instead of -inf, keeping the loss and its gradient finite.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > LOG_HALF
    close = torch.log(-torch.expm1(torch.where(near_zero, x, LOG_HALF)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, LOG_HALF, x)))
    return torch.where(near_zero, close, far)


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` with ``log p = avg_logps``."""
    return avg_logps - log1mexp(avg_logps)


def orpo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """``-beta log sigma(log odds(y_w) - log odds(y_l))`` on mean log-probs.

    Computed in float32 at least (bf16 log-probs near 0 would make ``1 - p`` meaningless).
    Metrics as TRL's: ``log_odds_ratio`` is ``log sigma(...)``, ``log_odds_chosen`` the
    log-odds difference; rewards are ``beta * avg``.
    """
    beta = float(hparams["beta"])
    dtype = torch.promote_types(reduced.chosen.dtype, torch.float32)
    chosen, rejected = reduced.chosen.to(dtype), reduced.rejected.to(dtype)
    log_odds_gap = log_odds(chosen) - log_odds(rejected)
    log_odds_ratio = F.logsigmoid(log_odds_gap)
    return ObjectiveTerms(
        losses=-beta * log_odds_ratio,
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).detach(),
        metrics={"log_odds_ratio": log_odds_ratio.detach(),
                 "log_odds_chosen": log_odds_gap.detach()},
    )


ORPO = register(Objective(
    name="orpo",
    paper="Hong, Lee & Thorne 2024, ORPO: Monolithic Preference Optimization without "
          "Reference Model, arXiv:2403.07691",
    equation="NLL(y_w) - lambda log sigma(log odds(y_w) - log odds(y_l)), "
             "odds(y) = p / (1 - p), p = exp(avg(y))",
    needs_reference=False, paired=True, reduction="mean", loss_fn=orpo_loss,
    hyperparameters=(beta(0.1, "lambda (TRL's beta): the weight of the odds-ratio term"),),
    nll_weight=1.0,
))
