"""Supervised fine-tuning on the chosen completions: the NLL term alone.

Registered as an objective so the trainer needs no special case: the preference part is
zero and compute.py adds the token-mean NLL over the step's chosen tokens (``nll_weight``).
"""

from __future__ import annotations

from typing import Mapping

from preftune.objectives.base import Objective, register
from preftune.types import ObjectiveTerms, ReducedLogps


def sft_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """Zero preference loss, built from the log-probs (``chosen * 0``) rather than
    ``torch.zeros`` so that it stays in the autograd graph: with ``nll_weight=0`` the step
    loss is still a differentiable 0 and ``backward()`` does not fail.

    SFT has no implicit reward; the "rewards" logged are the mean log-probs (the reduction
    is "mean", without any beta), so rewards/margins reads as how much more likely, per
    token, the chosen completion is than the rejected one.
    """
    return ObjectiveTerms(
        losses=reduced.chosen * 0,
        chosen_rewards=reduced.chosen.detach(),
        rejected_rewards=reduced.rejected.detach(),
    )


SFT = register(Objective(
    name="sft",
    paper="Supervised fine-tuning (maximum likelihood on the chosen completions); no paper",
    equation="NLL(y_w): token mean over all chosen completion tokens of the optimizer step",
    needs_reference=False, paired=True, reduction="mean", loss_fn=sft_loss,
    nll_weight=1.0,
))
