"""BCO, Jung, Park, Jeon, Kim, Lee & Kim 2024, "Binary Classifier Optimization for Large
Language Model Alignment" (arXiv:2404.04656), paired form (TRL's DPOTrainer ``bco_pair``).

The implicit reward ``beta (lp - ref)`` is the logit of a binary classifier (chosen = 1,
rejected = 0), shifted by delta, the mean reward: the paper's reward shift, which narrows
the gap between the classifier's loss and DPO's:

    -log sigma(beta r_w - delta) - log sigma(-(beta r_l - delta)),   r = lp - ref.

**Where delta comes from.** The paper keeps a running mean of the rewards over training;
TRL's earlier DPOTrainer did so too (``RunningMoments``: the running mean of every
micro-batch's mean reward, gathered over processes, updated before use). TRL 1.16 dropped
the shift (delta = 0). Here delta is the mean of this call's 2B rewards (chosen and
rejected), detached: the paper's shift estimated on the current micro-batch, i.e. TRL's
former running mean at its first step on one process. No hidden state is kept, so a resumed
run computes the same numbers; the price is that delta is per micro-batch and per process
(``batch_coupled``): gradient accumulation and data parallelism change it, as they change
KTO's reference point. With one pair per micro-batch delta is the pair's own mean reward
and the loss becomes ``-2 log sigma(beta h / 2)``, so use micro-batches of several pairs.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from preftune.objectives.base import Objective, register
from preftune.objectives.common import log_ratios
from preftune.objectives.hyperparameters import beta
from preftune.types import ObjectiveTerms, ReducedLogps


def reward_shift(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """delta: the mean of every reward in the call, without gradient (the paper's delta is
    a running statistic, not a function of the current parameters)."""
    return torch.cat([chosen_rewards, rejected_rewards]).detach().mean()


def bco_pair_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """``-log sigma(beta r_w - delta) - log sigma(delta - beta r_l)``, delta the micro-batch
    mean reward (module docstring). ``metrics["delta"]`` repeats delta per pair."""
    beta = float(hparams["beta"])
    chosen_ratio, rejected_ratio = log_ratios(reduced)
    chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
    delta = reward_shift(chosen, rejected)
    losses = -F.logsigmoid(chosen - delta) - F.logsigmoid(delta - rejected)
    return ObjectiveTerms(losses=losses, chosen_rewards=chosen.detach(),
                          rejected_rewards=rejected.detach(),
                          metrics={"delta": delta.expand_as(losses)})


BCO_PAIR = register(Objective(
    name="bco-pair",
    paper="Jung, Park, Jeon, Kim, Lee & Kim 2024, Binary Classifier Optimization for Large "
          "Language Model Alignment, arXiv:2404.04656",
    equation="-log sigma(beta r_w - delta) - log sigma(-(beta r_l - delta)), r = lp - ref, "
             "delta = mean reward of the micro-batch, detached",
    needs_reference=True, paired=True, reduction="sum", loss_fn=bco_pair_loss,
    hyperparameters=(beta(0.1),), batch_coupled=True,
))
