"""AlphaPO's reward shape, Gupta et al. 2025, "AlphaPO: Reward Shape Matters for LLM
Alignment" (arXiv:2501.03884): the reference-free reward ``lp`` of CPO and SimPO becomes

    r_alpha = (1 - p^(-alpha)) / alpha,   p = exp(lp),

with lp the reduced log-prob (a sum for cpo, a per-token mean for simpo and cpo-simpo, so
``p^(1/n)`` as in the paper). alpha -> 0 gives back ``lp``; alpha = 0 is skipped, so the
plain formulas are computed exactly as before. It is TRL's CPOConfig ``alpha`` (its
``loss_type="alphapo"`` is simpo with this alpha and no NLL term).

TRL computes ``p = exp(lp)`` first: a completion whose summed log-prob is below about -104
underflows p to 0 in float32, ``p^(-alpha)`` is inf for alpha > 0 and the margin of two such
completions inf - inf = NaN (a completion sum of -150 is enough). Here ``p^(-alpha)`` is
``exp(-alpha lp)`` and the margin ``r_w - r_l = (e^(u_l) - e^(u_w)) / alpha``,
``u = -alpha lp``, is ``e^(u_max) expm1(u_min - u_max)``, factored at the larger exponent: no
0 x inf, no cancellation between two large rewards, exact where the two are equal, with
beta folded into the exponent. Values and gradients are finite wherever the loss's gradient
is representable: everywhere for alpha < 0 (the reward is bounded by 1/|alpha|); for
alpha > 0 wherever ``beta e^(-alpha lp) / alpha`` is (``-alpha lp`` up to ~88.7 in float32,
709 in float64), and beyond that too when the chosen completion is the likelier one (loss
and gradient 0). Beyond that range with the rejected completion at least as likely as the
chosen one, the gradient itself exceeds the dtype, and the loss is not finite either.
"""

from __future__ import annotations

import math

import torch

from preftune.objectives.hyperparameters import HyperParameter

ALPHA = HyperParameter(
    "alpha", 0.0, "AlphaPO reward shape alpha: reward (1 - p^(-alpha)) / alpha instead of "
    "log p (TRL's CPOConfig alpha); 0 = log p", option=True)


def shaped_reward(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - exp(-alpha lp)) / alpha``; ``lp`` itself at alpha = 0."""
    if alpha == 0.0:
        return logps
    return -torch.expm1(-alpha * logps) / alpha


def shaped_margin(chosen: torch.Tensor, rejected: torch.Tensor, alpha: float,
                  scale: float) -> torch.Tensor:
    """``scale * (r_alpha(chosen) - r_alpha(rejected))``, alpha != 0, without overflow or
    cancellation (module docstring). ``scale`` (beta, > 0) is folded into the exponent, so the
    result is finite wherever it is representable.

    Where the chosen reward beats the rejected one by more than the dtype holds, the loss
    ``-log sigma(margin - gamma)`` and its gradient are 0 to the dtype's precision: those
    entries are computed on a stand-in (0 = 0) and reported as the largest finite margin, so
    no inf reaches autograd (0 x inf would be NaN). In the opposite case the gradient is
    beyond the dtype, and so is the result.
    """
    u_chosen, u_rejected = -alpha * chosen, -alpha * rejected
    # The anchor is chosen by a comparison (no gradient); torch.where then routes each
    # gradient to the exponent it selected, so the branch not taken contributes nothing.
    chosen_is_larger = u_chosen >= u_rejected
    larger = torch.where(chosen_is_larger, u_chosen, u_rejected)
    smaller = torch.where(chosen_is_larger, u_rejected, u_chosen)
    # margin = (e^u_rejected - e^u_chosen) * scale / alpha = +-gap, gap = e^larger (1 -
    # e^(smaller - larger)) * scale / |alpha| >= 0, positive (chosen reward higher) when the
    # rejected exponent is the larger for alpha > 0, the chosen one for alpha < 0.
    positive = chosen_is_larger if alpha < 0 else ~chosen_is_larger
    log_scale = math.log(scale / abs(alpha))
    finfo = torch.finfo(chosen.dtype)
    beyond = positive & (larger + log_scale > math.log(finfo.max))
    larger = torch.where(beyond, torch.zeros_like(larger), larger)
    smaller = torch.where(beyond, torch.zeros_like(smaller), smaller)
    gap = torch.exp(larger + log_scale) * -torch.expm1(smaller - larger)
    return torch.where(beyond, torch.full_like(gap, finfo.max), torch.where(positive, gap, -gap))
