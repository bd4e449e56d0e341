"""DPO's variants that change only the per-pair formula on the reference log-ratios
(TRL's DPOTrainer ``loss_type`` robust, exo_pair, nca_pair, sppo_hard, sigmoid_norm).

Notation: ``r_w = lp(y_w) - ref(y_w)``, ``r_l = lp(y_l) - ref(y_l)``, ``h = r_w - r_l``.
Rewards are DPO's implicit ``beta * r`` (detached), as TRL logs them for every loss type.
Each formula is a function of per-sequence numbers only, so the reduction station
(:mod:`preftune.forward.reduction`) and any option acting there (length-normalised or
down-sampled sums) compose with it unchanged; sigmoid-norm *is* DPO on the "mean" reduction.
Every log-sigmoid is ``F.logsigmoid`` (stable at any margin), never ``log(sigmoid(.))``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios, positive
from preftune.objectives.hyperparameters import LABEL_SMOOTHING, HyperParameter, beta
from preftune.objectives.interval import Interval
from preftune.objectives.sigmoid_family import dpo_loss
from preftune.types import ObjectiveTerms, ReducedLogps


def _terms(losses: torch.Tensor, beta: float, chosen_ratio: torch.Tensor,
           rejected_ratio: torch.Tensor) -> ObjectiveTerms:
    return ObjectiveTerms(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


def robust_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """rDPO, Chowdhury, Kini & Natarajan 2024 (arXiv:2403.00409): the unbiased
    estimate of the clean-label DPO loss when labels flip with probability eps,

        [(1 - eps) l(y_w, y_l) - eps l(y_l, y_w)] / (1 - 2 eps),  l(a, b) = -log sigma(beta h).

    Unlike cDPO's smoothing (a convex mix) the flipped term enters with a minus sign, so the
    loss may go negative; eps = 0 is DPO. eps < 0.5 (the denominator) is enforced by the
    declaration, as TRL checks it.
    """
    beta, eps = float(hparams["beta"]), float(hparams["label_smoothing"])
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for robust, got {eps}")
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    logits = beta * (chosen_ratio - rejected_ratio)
    clean, flipped = -F.logsigmoid(logits), -F.logsigmoid(-logits)
    losses = ((1.0 - eps) * clean - eps * flipped) / (1.0 - 2.0 * eps)
    return _terms(losses, beta, chosen_ratio, rejected_ratio)


def exo_pair_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """EXO, Ji et al. 2024 (arXiv:2402.00856), the pairwise EXO-pref loss (Eq. 16, K = 2):
    ``KL(p_theta || p_eps)`` between the policy's distribution over the pair,
    ``p_theta = softmax(beta r_w, beta r_l) = (sigma(beta h), sigma(-beta h))``, and the
    label distribution ``p_eps = (1 - eps, eps)``:

        sigma(z) [log sigma(z) - log(1 - eps)] + sigma(-z) [log sigma(-z) - log eps],  z = beta h.

    eps must be > 0 (log eps); the paper uses 1e-3. Here ``beta`` is the paper's beta_r and
    beta_pi alike, as in TRL.
    """
    beta, eps = float(hparams["beta"]), positive(hparams, "label_smoothing")
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    logits = beta * (chosen_ratio - rejected_ratio)
    log_q_chosen, log_q_rejected = F.logsigmoid(logits), F.logsigmoid(-logits)
    losses = (log_q_chosen.exp() * (log_q_chosen - math.log1p(-eps))
              + log_q_rejected.exp() * (log_q_rejected - math.log(eps)))
    return _terms(losses, beta, chosen_ratio, rejected_ratio)


def nca_pair_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """NCA, Chen, Guo, Ding, Zhu & Liu 2024 (arXiv:2402.05369), the pairwise NCA loss:

        -log sigma(beta r_w) - 1/2 log sigma(-beta r_w) - 1/2 log sigma(-beta r_l).

    Each response's own reward is pushed, not only the gap h: the chosen one's likelihood
    is raised in absolute terms (the paper's answer to DPO lowering both).
    """
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
    losses = (-F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen)
              - 0.5 * F.logsigmoid(-rejected))
    return _terms(losses, beta, chosen_ratio, rejected_ratio)


def sppo_hard_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """SPPO, Wu, Sun, Yuan, Ji, Yang & Gu 2024 (arXiv:2405.00675), Eq. 4.7 with hard
    win probabilities (1 for y_w, 0 for y_l) and eta = 1/beta:

        (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2.

    The paper estimates the probabilities with a preference model (PairRM); with a labelled
    pair the hard version is what TRL's ``sppo_hard`` implements.
    """
    beta = positive(hparams, "beta")
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    target = 0.5 / beta
    losses = (chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2
    return _terms(losses, beta, chosen_ratio, rejected_ratio)


def sigmoid_norm_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Length-normalised DPO (the DPO objective of Tulu 3, Lambert et al. 2024,
    arXiv:2411.15124):
    ``-log sigma(beta [r_w / n(y_w) - r_l / n(y_l)])``. It is DPO's formula; the division
    by the completion lengths is the "mean" reduction this objective is registered with,
    so ``reduced`` already holds ``lp / n`` and ``ref / n`` (TRL divides the summed
    log-ratios by the same token counts). Rewards are therefore per token.
    """
    return dpo_loss(reduced, hparams)


ROBUST_FLIP_RATE = HyperParameter(
    "label_smoothing", 0.0, "assumed label flip rate eps (rDPO; TRL's label_smoothing)",
    Interval(0.0, 0.5, high_open=True))
# TRL's default 0 is refused for exo_pair (log 0); the EXO paper's 1e-3 is the default here.
EXO_LABEL_SMOOTHING = HyperParameter(
    "label_smoothing", 1e-3, "label smoothing eps of EXO's target (1 - eps, eps)",
    Interval(0.0, 0.5, low_open=True, high_open=True))

ROBUST = register(Objective(
    name="robust",
    paper="Chowdhury, Kini & Natarajan 2024, Provably Robust DPO: Aligning Language Models "
          "with Noisy Feedback, arXiv:2403.00409",
    equation="[-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps), "
             "h = [lp(y_w) - ref(y_w)] - [lp(y_l) - ref(y_l)]",
    needs_reference=True, paired=True, reduction="sum", loss_fn=robust_loss,
    hyperparameters=(beta(0.1), ROBUST_FLIP_RATE),
))

EXO_PAIR = register(Objective(
    name="exo-pair",
    paper="Ji, Lu, Niu, Ke, Wang, Mao, Zhu, Huang & Gu 2024, Towards Efficient Exact "
          "Optimization of Language Model Alignment, arXiv:2402.00856",
    equation="sigma(beta h) [log sigma(beta h) - log(1-eps)] + sigma(-beta h) "
             "[log sigma(-beta h) - log eps]",
    needs_reference=True, paired=True, reduction="sum", loss_fn=exo_pair_loss,
    hyperparameters=(beta(0.1), EXO_LABEL_SMOOTHING),
))

NCA_PAIR = register(Objective(
    name="nca-pair",
    paper="Chen, Guo, Ding, Zhu & Liu 2024, Noise Contrastive Alignment of Language Models "
          "with Explicit Rewards, arXiv:2402.05369",
    equation="-log sigma(beta r_w) - 0.5 log sigma(-beta r_w) - 0.5 log sigma(-beta r_l), "
             "r = lp - ref",
    needs_reference=True, paired=True, reduction="sum", loss_fn=nca_pair_loss,
    hyperparameters=(beta(0.1),),
))

SPPO_HARD = register(Objective(
    name="sppo-hard",
    paper="Wu, Sun, Yuan, Ji, Yang & Gu 2024, Self-Play Preference Optimization for Language "
          "Model Alignment, arXiv:2405.00675 (hard win probabilities)",
    equation="(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2, r = lp - ref",
    needs_reference=True, paired=True, reduction="sum", loss_fn=sppo_hard_loss,
    hyperparameters=(beta(0.1, "beta = 1/eta: the log-ratios are pulled to +-1/(2 beta)"),),
))

SIGMOID_NORM = register(Objective(
    name="sigmoid-norm",
    paper="Length-normalised DPO as in Lambert et al. 2024, Tulu 3: Pushing Frontiers in Open "
          "Language Model Post-Training, arXiv:2411.15124 (TRL's sigmoid_norm)",
    equation="-log sigma(beta h_avg), h_avg = [lp(y_w) - ref(y_w)] / n(y_w) - "
             "[lp(y_l) - ref(y_l)] / n(y_l)",
    needs_reference=True, paired=True, reduction="mean", loss_fn=sigmoid_norm_loss,
    hyperparameters=(beta(0.1), LABEL_SMOOTHING),
))
