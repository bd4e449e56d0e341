"""The values that travel down the pipeline, one dataclass per station boundary.

rows -> TokenizedPair -> (batches: lists of TokenizedPair) -> SequenceLogps
     -> ReducedLogps -> ObjectiveTerms -> loss

Every tensor here is completion-aligned: index 0 is the first completion token.
Prompt tokens never appear after the forward step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class TokenizedPair:
    """One training example after tokenization and truncation.

    For paired data ``chosen_ids``/``rejected_ids`` are the two completions. For unpaired
    (KTO) data ``chosen_ids`` is the completion, ``label`` says whether it is desirable, and
    ``rejected_ids`` is a *mismatched* completion (another row's) used only for KTO's KL
    estimate; it shares this row's prompt so the forward step treats both layouts alike.
    Completions end with EOS; the prompt starts with BOS when the tokenizer uses one.
    """

    example_id: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    label: Optional[bool] = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass
class SequenceLogps:
    """Per-token log-probabilities of the completions, as the forward step returns them.

    ``chosen``/``rejected`` are ``[batch, tokens]`` float tensors holding
    ``log pi(token | prefix)`` at completion positions and 0 elsewhere; the masks are bool.
    ``aux_loss`` is the model's router auxiliary loss (mixture-of-experts), if any.
    """

    chosen: torch.Tensor
    chosen_mask: torch.Tensor
    rejected: torch.Tensor
    rejected_mask: torch.Tensor
    aux_loss: Optional[torch.Tensor] = None
    # Per-token ``log sum_v pi(v | prefix)^2`` (WPO's alignment term), when the forward was
    # asked for it (objectives/weighting.py); None otherwise.
    chosen_log_sum_sq: Optional[torch.Tensor] = None
    rejected_log_sum_sq: Optional[torch.Tensor] = None

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(self.chosen.detach(), self.chosen_mask, self.rejected.detach(),
                             self.rejected_mask, None)


@dataclass
class ReducedLogps:
    """One number per sequence, after the reduction step (sum, mean, or SamPO down-sampling).

    ``ref_*`` are None for reference-free objectives. ``*_lengths`` are the completion token
    counts before any down-sampling (R-DPO's length term uses them). ``labels`` is set for
    unpaired data only.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    ref_chosen: Optional[torch.Tensor] = None
    ref_rejected: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    # f-DPO's f'-scores of the log-ratios, which formulas then read in their place
    # (objectives/common.py log_ratios); None: the plain log-ratios (reverse KL).
    chosen_scores: Optional[torch.Tensor] = None
    rejected_scores: Optional[torch.Tensor] = None


@dataclass
class ObjectiveTerms:
    """What an objective's formula returns, per example.

    ``losses`` is the preference part of the loss (no NLL term; that is added once, by
    :func:`preftune.objectives.compute.step_loss`, with step-level token normalisation).
    ``chosen_rewards``/``rejected_rewards`` are the implicit rewards the metrics report.
    ``metrics`` holds extra per-example quantities an objective wants logged (means are
    taken by the trainer).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
