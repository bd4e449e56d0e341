"""Options that change how any reference objective scores a pair, applied at the stations
around the formula, never inside it (TRL's DPOConfig names):

- ``ld_alpha`` (LD-DPO, Liu et al. 2024, arXiv:2409.06411): the reduction station
  (:func:`preftune.forward.reduction.reduce_logps`) counts each pair's shared-length prefix
  fully and the longer completion's excess tokens ``ld_alpha`` times, policy and reference
  alike.
- ``f_divergence_type`` (f-DPO, Wang et al. 2023, arXiv:2309.16240, Table 1): the reduced
  log-ratio ``u = lp - ref`` is replaced by the divergence's ``f'(exp(u))`` wherever a formula
  reads it (objectives/common.py ``log_ratios``); reverse KL's ``f'`` is ``u`` itself (DPO).
  That is every reference objective, where TRL allows it for a list of loss types only;
  the logged rewards are then ``beta`` times the scores (TRL logs the plain log-ratios).
- ``use_weighting`` (WPO, Zhou et al. 2024, arXiv:2406.11827, Eq. 2): each pair's preference
  loss is multiplied by the policy's own, detached, length-normalised aligned probability
  of its two completions.

How they compose, in pipeline order: ld_alpha shapes the reduced log-probs; the f-score is
taken of the reduced log-ratio (so of the LD-weighted one, and for a mean-reducing objective
such as IPO of the mean log-ratio, where TRL divides the f-score of the sum by the length);
the formula runs on the scores; the WPO weight, computed from the raw per-token log-probs
of the whole completions (neither LD-weighted nor down-sampled, as TRL does), multiplies
the per-example preference loss of every component of a mixture. The chosen-completion NLL
term (``sft``, ``cpo_alpha``) is left unweighted: WPO reweighs preference pairs to simulate
on-policy sampling; an SFT term on the chosen completions is no such pair (TRL 1.16 tries to
weigh it and raises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from preftune.forward.logps import log_sum_sq_probs  # noqa: F401 - WPO's alignment term
from preftune.types import ReducedLogps, SequenceLogps

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass(frozen=True)
class ScoringOptions:
    """The run's DPOConfig options (config.py MethodConfig, checked by validation.py)."""

    use_weighting: bool = False
    ld_alpha: Optional[float] = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 1.0

    def describe(self) -> list[str]:
        parts = ["use_weighting (WPO)"] if self.use_weighting else []
        if self.ld_alpha is not None:
            parts.append(f"ld_alpha={self.ld_alpha:g}")
        if self.f_divergence_type != "reverse_kl":
            coef = (f" {self.f_alpha_divergence_coef:g}"
                    if self.f_divergence_type == "alpha_divergence" else "")
            parts.append(f"f_divergence={self.f_divergence_type}{coef}")
        return parts


def tangent_from(dtype: torch.dtype) -> float:
    """Where ``exp`` continues along its tangent (:func:`expm1_tangent`): TRL's clamp points
    (80; 11 in float16, whose largest value is 65504), so that the scores equal TRL's
    wherever TRL's are exact."""
    return 11.0 if dtype == torch.float16 else 80.0


def expm1_tangent(t: torch.Tensor) -> torch.Tensor:
    """``exp(t) - 1`` up to ``T = tangent_from(dtype)``, then ``e^T (1 + log(1 + t - T)) - 1``:
    continuous, with a continuous, strictly positive derivative (``e^T / (1 + t - T)``) that
    never overflows.

    TRL clamps ``t`` at 80, so past it the score is constant and its gradient silently 0
    (alpha 0.5 and a rejected log-ratio of -200 give t = 100); un-clamped, ``exp`` overflows
    float32 at 88.7. Past T the extension grows like a logarithm, so the score of any finite
    log-ratio stays below ``e^T (1 + 89)`` and the pair still moves the policy. Below T the
    value is exact (where the true derivative ``e^t`` underflows, t < -103 in float32, it
    is 0 in any computation)."""
    limit = tangent_from(t.dtype)
    inside = t.clamp(max=limit)
    beyond = torch.exp(inside) * (1.0 + torch.log1p(t - inside)) - 1.0
    # expm1's backward is (result + 1), which rounds to 0 once e^t is below the dtype's
    # epsilon (t < -17 in float32); exp(t) - 1 keeps the gradient e^t, and loses nothing
    # in value where |e^t - 1| > 0.63.
    exact = torch.where(inside < -1.0, torch.exp(inside) - 1.0, torch.expm1(inside))
    return torch.where(t <= limit, exact, beyond)


def alpha_score(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-divergence's ``f'(r) = (r^(alpha-1) - 1) / (alpha - 1)`` at ``r = exp(u)``,
    computed as ``expm1((alpha-1) u) / (alpha-1)`` (exact near u = 0, where the
    subtraction would cancel); alpha = 1 is its limit, ``u`` (reverse KL)."""
    a = float(alpha) - 1.0
    if a == 0.0:
        return log_ratio
    return expm1_tangent(a * log_ratio) / a


def f_scores(log_ratio: torch.Tensor, kind: str, alpha: float = 1.0) -> torch.Tensor:
    """f-DPO's score of a log-ratio ``u`` (Wang et al. 2023, Table 1, ``f'(exp(u))``):
    reverse_kl ``u``; forward_kl ``1 - exp(-u)`` (alpha-divergence at alpha 0);
    js_divergence ``log 2 + log sigma(u)``; alpha_divergence ``(exp((alpha-1) u) - 1) /
    (alpha-1)``."""
    if kind == "reverse_kl":
        return log_ratio
    if kind == "forward_kl":
        return alpha_score(log_ratio, 0.0)
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(log_ratio)
    if kind == "alpha_divergence":
        return alpha_score(log_ratio, alpha)
    raise ValueError(f"unknown f_divergence_type {kind!r}; one of {', '.join(F_DIVERGENCES)}")


def apply_f_divergence(reduced: ReducedLogps, options: ScoringOptions) -> ReducedLogps:
    """Sets ``reduced``'s scores (read by ``log_ratios``) unless the divergence is reverse
    KL or there is no reference to take a ratio against."""
    kind = options.f_divergence_type
    if kind == "reverse_kl" or reduced.ref_chosen is None or reduced.ref_rejected is None:
        return reduced
    coef = options.f_alpha_divergence_coef
    reduced.chosen_scores = f_scores(reduced.chosen - reduced.ref_chosen, kind, coef)
    reduced.rejected_scores = f_scores(reduced.rejected - reduced.ref_rejected, kind, coef)
    return reduced


def aligned_mean_logps(token_logps: torch.Tensor, log_sum_sq: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """WPO's length-normalised aligned log-probability of one completion:
    ``(1/|y|) sum_t [log pi(y_t) - log sum_v pi(v)^2]`` (the ratio of the token's
    probability to the probability the policy's own sampling gives the token it samples,
    Zhou et al. 2024 Eq. 2); 0 for an empty completion."""
    aligned = (token_logps - log_sum_sq) * mask
    return aligned.sum(-1) / mask.sum(-1).clamp(min=1)


def wpo_weights(policy: SequenceLogps) -> torch.Tensor:
    """Per-pair weights ``exp(aligned_mean(y_w) + aligned_mean(y_l))``, detached (WPO treats
    them as constants). Not clamped, as in TRL 1.16 (earlier TRL clamped at 1): per token
    the aligned ratio is at most the vocabulary size, so the weight stays finite."""
    if policy.chosen_log_sum_sq is None or policy.rejected_log_sum_sq is None:
        raise ValueError("use_weighting needs log sum_v pi(v)^2 per token from the forward "
                         "station: PaddedForward or FastForward with log_sum_sq=True (what "
                         "build_forward gives when use_weighting is on)")
    with torch.no_grad():
        chosen = aligned_mean_logps(policy.chosen, policy.chosen_log_sum_sq, policy.chosen_mask)
        rejected = aligned_mean_logps(policy.rejected, policy.rejected_log_sum_sq,
                                      policy.rejected_mask)
        return torch.exp(chosen + rejected)

