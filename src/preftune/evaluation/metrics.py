"""Held-out preference metrics of a model under an objective's implicit reward.

Reward accuracy (the share of pairs whose chosen completion gets the higher implicit
reward), the mean reward margin, and the token-mean NLL of the chosen completions. The
numbers come from the one scorer (preftune.train.scoring.score_pairs) that training's
evaluation uses too, so they match the training log's ``eval_*`` metrics for the same
pairs: the same forward station, reduction and objective.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from preftune.config import Config, TrainingConfig
from preftune.distributed import OneProcess
from preftune.objectives.method import ResolvedMethod
from preftune.train.scoring import ScoringParts, score_pairs
from preftune.types import TokenizedPair

# The summary's names for the scorer's metrics (TRL's names).
SUMMARY = {"reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins",
           "reward_chosen": "rewards/chosen", "reward_rejected": "rewards/rejected",
           "preference_loss": "loss/preference", "nll_chosen": "nll/chosen",
           "logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected",
           "length_chosen": "lengths/chosen", "length_rejected": "lengths/rejected"}


def summarize(means: dict[str, float], pairs: int) -> dict:
    """The scorer's means under the names ``preftune eval`` writes in eval.json."""
    return {"pairs": pairs, **{name: means[key] for name, key in SUMMARY.items()}}


def check_scorable(method: ResolvedMethod, reference: Optional[Callable]) -> None:
    if not method.objective.paired:
        raise ValueError(f"{method.objective.name} is unpaired; held-out metrics score "
                         "pairs (use its paired form, e.g. kto-pair)")
    if method.needs_reference and reference is None:
        raise ValueError(f"{method.objective.name} needs a reference model")


def preference_metrics(model, pairs: Sequence[TokenizedPair], method: ResolvedMethod,
                       forward: Callable, reference: Optional[Callable] = None,
                       batch_size: int = 8, device: Optional[torch.device] = None,
                       progress: bool = False) -> dict:
    """The metrics of a model outside a run (a notebook, a test): one process on
    ``device`` (default: the model's), no autocast. ``reference`` is a reference source
    ``(pairs, device) -> SequenceLogps`` (preftune.reference.build); required when the method
    needs one and is not reference-free. ``preftune eval`` assembles its parts instead
    (assemble.assemble_scoring), for LoRA, cached and multi-process scoring."""
    check_scorable(method, reference)
    # Seed 0: where SamPO draws its positions, the same draw for every call.
    parts = ScoringParts(
        config=Config(training=TrainingConfig(seed=0)), method=method, accelerator=OneProcess(
            device or next(model.parameters()).device), log=print, tokenizer=None,
        model=model, forward=forward, reference=reference, eval_pairs=list(pairs))
    return summarize(score_pairs(parts, pairs, batch_size, progress=progress), len(pairs))
