"""DiscoPOP, Chris Lu, Holt, Fanconi, Chan, Foerster, van der Schaar & Lange 2024,
"Discovering Preference Optimization Algorithms with and for Large Language Models"
(arXiv:2406.08414), the log-ratio modulated loss (LRML, Eq. 5): with ``z = beta h``,

    (1 - sigma(z / tau)) (-log sigma(z)) + sigma(z / tau) exp(-z),

a blend of DPO's logistic loss and the exponential loss, the weight moving to the
exponential one as the margin grows. TRL computes ``exp(-z)`` and ``sigma(z / tau)``
separately: once ``z < -88.7`` in float32, ``exp(-z)`` is inf, ``sigma(z / tau)`` is 0 and
their product NaN, which turns the whole batch's loss into NaN. Here the exponential term is
``exp(log sigma(z / tau) - z)``, one exponent that stays <= 0 for ``z`` << 0 whenever
tau <= 1 (it tends to ``z (1/tau - 1)``), and ``1 - sigma(z / tau)`` is ``sigma(-z / tau)``,
so the loss and its gradient are finite at every finite margin. Above tau = 1 the
exponential branch itself grows like ``exp(-z (1 - 1/tau))`` as z -> -inf and overflows for
large enough margins whatever the arithmetic, so tau is bounded to (0, 1]; the paper uses
0.05.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios, positive
from preftune.objectives.hyperparameters import HyperParameter, beta
from preftune.objectives.interval import Interval
from preftune.types import ObjectiveTerms, ReducedLogps


def lrml(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The LRML loss of ``z = logits``, in log space (module docstring)."""
    logistic = F.softplus(-logits)  # -log sigma(z)
    exponential = torch.exp(F.logsigmoid(logits / tau) - logits)  # sigma(z/tau) exp(-z)
    return torch.sigmoid(-logits / tau) * logistic + exponential


def discopop_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """LRML on DPO's margin: ``lrml(beta h, tau)``, ``h = [lp(y_w) - ref(y_w)] -
    [lp(y_l) - ref(y_l)]``."""
    beta, tau = float(hparams["beta"]), positive(hparams, "discopop_tau")
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    losses = lrml(beta * (chosen_ratio - rejected_ratio), tau)
    return ObjectiveTerms(losses=losses, chosen_rewards=(beta * chosen_ratio).detach(),
                          rejected_rewards=(beta * rejected_ratio).detach())


DISCOPOP_TAU = HyperParameter(
    "discopop_tau", 0.05, "temperature tau of DiscoPOP's blend weight sigma(beta h / tau) "
    "(TRL's discopop_tau)", Interval(0.0, 1.0, low_open=True))

DISCOPOP = register(Objective(
    name="discopop",
    paper="Chris Lu, Holt, Fanconi, Chan, Foerster, van der Schaar & Lange 2024, Discovering "
          "Preference Optimization Algorithms with and for Large Language Models, "
          "arXiv:2406.08414",
    equation="(1 - sigma(beta h / tau)) (-log sigma(beta h)) + sigma(beta h / tau) "
             "exp(-beta h), h = [lp(y_w) - ref(y_w)] - [lp(y_l) - ref(y_l)]",
    needs_reference=True, paired=True, reduction="sum", loss_fn=discopop_loss,
    hyperparameters=(beta(0.1), DISCOPOP_TAU),
))
