"""Objectives of the form ``-log sigma(z)`` on a log-prob margin z: DPO, R-DPO, SamPO, CPO,
SimPO and CPO-SimPO.

They differ only in z and in how per-token log-probs were reduced (a separate station,
see :mod:`preftune.forward.reduction`): SamPO is DPO's formula on down-sampled sums, SimPO is a
margin on mean log-probs without a reference. Every one takes ``label_smoothing`` (cDPO):
``-(1 - eps) log sigma(z) - eps log sigma(-z)``.

Rewards are each paper's implicit reward, as TRL logs them: ``beta * (lp - ref)`` for
reference methods (DPO's), ``beta * lp`` (sum or mean, as reduced) for reference-free ones
(SimPO's, Eq. 4 of its paper). They are detached: only metrics read them.
"""

from __future__ import annotations

from typing import Mapping

from preftune.objectives.alphapo import ALPHA, shaped_margin, shaped_reward
from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios, positive, smoothed_sigmoid_loss
from preftune.objectives.hyperparameters import LABEL_SMOOTHING, HyperParameter, beta
from preftune.objectives.interval import NON_NEGATIVE
from preftune.types import ObjectiveTerms, ReducedLogps


def dpo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290), Eq. 7.

    ``-log sigma(beta h)``, ``h = [lp(y_w) - ref(y_w)] - [lp(y_l) - ref(y_l)]``. Also SamPO's
    loss: SamPO only changes how lp and ref are summed (Lu et al. 2024, arXiv:2406.10957).
    """
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    logits = beta * (chosen_ratio - rejected_ratio)
    return ObjectiveTerms(
        losses=smoothed_sigmoid_loss(logits, hparams["label_smoothing"]),
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


def rdpo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """R-DPO, Park, Rafailov, Ermon & Finn 2024 (arXiv:2403.19159), the length-regularised DPO
    objective: ``-log sigma(beta h + alpha (|y_w| - |y_l|))``.

    Sign: the paper maximises ``r - alpha |y|`` under the KL constraint, so the implicit
    reward is ``beta log(pi/ref) + alpha |y|`` and the Bradley-Terry margin gains
    ``+alpha (|y_w| - |y_l|)``. A longer chosen answer then already carries part of the
    margin, so the policy is pushed less to lengthen (the point of the method). The SamPO
    repository's ``lenN`` loss, the source of alpha = 0.01, uses the same sign. Lengths are
    the completion token counts before any down-sampling.
    """
    beta, alpha = float(hparams["beta"]), float(hparams["alpha"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    length_gap = (reduced.chosen_lengths - reduced.rejected_lengths).to(chosen_ratio.dtype)
    logits = beta * (chosen_ratio - rejected_ratio) + alpha * length_gap
    return ObjectiveTerms(
        losses=smoothed_sigmoid_loss(logits, hparams["label_smoothing"]),
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


def cpo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """CPO, Xu et al. 2024 (arXiv:2401.08417): ``-log sigma(beta [lp(y_w) - lp(y_l)])`` on
    summed log-probs, no reference; the ``alpha NLL(y_w)`` term is added by compute.py.
    With AlphaPO's ``alpha`` (objectives/alphapo.py) lp becomes ``(1 - p^-alpha) / alpha``
    in the margin and the rewards, as TRL's CPOTrainer applies it to every loss type."""
    beta, alpha = float(hparams["beta"]), float(hparams["alpha"])
    if alpha:
        logits = shaped_margin(reduced.chosen, reduced.rejected, alpha, beta)
    else:
        logits = beta * (reduced.chosen - reduced.rejected)
    return ObjectiveTerms(
        losses=smoothed_sigmoid_loss(logits, hparams["label_smoothing"]),
        chosen_rewards=(beta * shaped_reward(reduced.chosen, alpha)).detach(),
        rejected_rewards=(beta * shaped_reward(reduced.rejected, alpha)).detach(),
    )


def simpo_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """SimPO, Meng, Xia & Chen 2024 (arXiv:2405.14734), Eq. 6:
    ``-log sigma(beta [avg(y_w) - avg(y_l)] - gamma)`` on mean log-probs, no reference.

    Written as ``beta * (delta - gamma / beta)``, the spelling of TRL and of the SimPO
    repository's ``gamma_beta_ratio``: the same number, and the same rounding as theirs.
    ``gamma`` is the absolute margin (TRL's ``simpo_gamma``). Also CPO-SimPO's preference
    term (its NLL term is added by compute.py). With ``alpha`` != 0 it is AlphaPO (Gupta
    et al. 2025, arXiv:2501.03884): the mean log-probs become ``(1 - p^-alpha) / alpha``.
    """
    beta, gamma = positive(hparams, "beta"), float(hparams["gamma"])
    alpha = float(hparams["alpha"])
    if alpha:
        logits = shaped_margin(reduced.chosen, reduced.rejected, alpha, beta) - gamma
    else:
        logits = beta * ((reduced.chosen - reduced.rejected) - gamma / beta)
    return ObjectiveTerms(
        losses=smoothed_sigmoid_loss(logits, hparams["label_smoothing"]),
        chosen_rewards=(beta * shaped_reward(reduced.chosen, alpha)).detach(),
        rejected_rewards=(beta * shaped_reward(reduced.rejected, alpha)).detach(),
    )


def margin(default: float) -> HyperParameter:
    """SimPO's target reward margin gamma (Meng et al. 2024, Eq. 6), in its three spellings:
    ``gamma``, TRL's ``simpo_gamma``, and the SimPO repository's ``gamma_beta_ratio``."""
    return HyperParameter(
        "gamma", default, "margin gamma between the chosen and rejected rewards (TRL's "
        "simpo_gamma; gamma_beta_ratio x beta in the SimPO repository)", NON_NEGATIVE,
        aliases=("simpo_gamma",), scaled_aliases=(("gamma_beta_ratio", "beta"),))


# The SamPO repository's lenN script uses 0.01; either sign is a valid weight.
RDPO_ALPHA = HyperParameter("alpha", 0.01, "length weight alpha: alpha (n(y_w) - n(y_l)) is "
                            "added to the margin", aliases=("rdpo_alpha",))

DPO = register(Objective(
    name="dpo",
    paper="Rafailov, Sharma, Mitchell, Ermon, Manning & Finn 2023, Direct Preference "
          "Optimization, arXiv:2305.18290 (label smoothing: cDPO, Mitchell 2023)",
    equation="-(1-eps) log sigma(beta h) - eps log sigma(-beta h), "
             "h = [lp(y_w) - ref(y_w)] - [lp(y_l) - ref(y_l)]",
    needs_reference=True, paired=True, reduction="sum", loss_fn=dpo_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING),
))

RDPO = register(Objective(
    name="rdpo",
    paper="Park, Rafailov, Ermon & Finn 2024, Disentangling Length from Quality in Direct "
          "Preference Optimization, arXiv:2403.19159",
    equation="-log sigma(beta h + alpha (n(y_w) - n(y_l))), n = completion tokens",
    needs_reference=True, paired=True, reduction="sum", loss_fn=rdpo_loss,
    hyperparameters=(beta(0.1), RDPO_ALPHA, LABEL_SMOOTHING),
))

SAMPO = register(Objective(
    name="sampo",
    paper="Lu, Li, An, Zhao, He, Yin & Sun 2024, Eliminating Biased Length Reliance of Direct "
          "Preference Optimization via Down-Sampled KL Divergence, arXiv:2406.10957",
    equation="-log sigma(beta h_s), h_s: log-ratios summed over min(n(y_w), n(y_l)) "
             "positions drawn per pair (Eq. 8)",
    needs_reference=True, paired=True, reduction="sampo", loss_fn=dpo_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING),
))

CPO = register(Objective(
    name="cpo",
    paper="Xu, Sharaf, Chen, Tan, Shen, Van Durme, Murray & Kim 2024, Contrastive Preference "
          "Optimization, arXiv:2401.08417",
    equation="-log sigma(beta [lp(y_w) - lp(y_l)]) + alpha NLL(y_w)",
    needs_reference=False, paired=True, reduction="sum", loss_fn=cpo_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING, ALPHA), nll_weight=1.0,
))

SIMPO = register(Objective(
    name="simpo",
    paper="Meng, Xia & Chen 2024, SimPO: Simple Preference Optimization with a "
          "Reference-Free Reward, arXiv:2405.14734",
    equation="-log sigma(beta [avg(y_w) - avg(y_l)] - gamma), avg = lp / n",
    needs_reference=False, paired=True, reduction="mean", loss_fn=simpo_loss,
    hyperparameters=(beta(2.0), margin(1.0), LABEL_SMOOTHING, ALPHA),
))

CPO_SIMPO = register(Objective(
    name="cpo-simpo",
    paper="CPO-SimPO (github.com/fe1ixxu/CPO_SIMPO, 2024): SimPO (Meng et al. 2024, "
          "arXiv:2405.14734) plus CPO's NLL term (Xu et al. 2024, arXiv:2401.08417)",
    equation="-log sigma(beta [avg(y_w) - avg(y_l)] - gamma) + alpha NLL(y_w)",
    needs_reference=False, paired=True, reduction="mean", loss_fn=simpo_loss,
    hyperparameters=(beta(10.0), margin(5.4), LABEL_SMOOTHING, ALPHA), nll_weight=0.05,
))
