"""Pairs through the policy, the reference and the objective: one micro-batch (training
and scoring share it), and the held-out scorer that training's evaluation, ``preftune
eval`` and :func:`preftune.evaluation.metrics.preference_metrics` all use.

Both take a :class:`ScoringParts` (a training run's assemble.RunParts is one): the model,
the forward station, the reference source, the method and the accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from preftune.batching.plan import eval_batches
from preftune.config import Config
from preftune.distributed import all_reduce
from preftune.objectives import compute_objective, example_metrics
from preftune.objectives.method import ResolvedMethod
from preftune.objectives.mixture import add_component_losses
from preftune.train.metrics import MetricWindow, total_loss
from preftune.train.pauses import EVAL_DELAY_ENV, pause
from preftune.types import TokenizedPair


@dataclass
class ScoringParts:
    """What scoring pairs needs: a model under a method, with its reference."""

    config: Config
    method: ResolvedMethod
    accelerator: Any
    log: Callable[[str], None]
    tokenizer: Any
    model: torch.nn.Module
    forward: Callable
    reference: Optional[Callable]
    """``(pairs, device) -> reference log-probs``, or None (preftune.reference.build)."""
    eval_pairs: list[TokenizedPair]


def batch_output(parts: ScoringParts, pairs: Sequence[TokenizedPair], step: int):
    """``(objective output, auxiliary loss)`` of one micro-batch."""
    acc, method = parts.accelerator, parts.method
    device = acc.device
    # Under autocast as the reference is (reference.py), so that the chunked head, which
    # runs outside the model's own (autocast-wrapped) forward, computes in bf16 too.
    with acc.autocast():
        policy = parts.forward(parts.model, pairs, device)
    reference = parts.reference(pairs, device) if parts.reference is not None else None
    labels = None
    if not method.objective.paired:
        labels = torch.tensor([bool(p.label) for p in pairs], device=device)
    output = compute_objective(
        method.objective, method.hparams, policy, reference,
        example_ids=[p.example_id for p in pairs], seed=parts.config.training.seed,
        step=step, labels=labels, nll_weight=method.nll_weight,
        reference_free=method.reference_free, options=method.options)
    return output, policy.aux_loss


def rank_batches(num_pairs: int, batch_size: int, rank: int, world: int
                 ) -> list[tuple[list[int], bool]]:
    """This rank's ``(batch, counted)`` list, the same length on every rank: ranks take
    interleaved batches, and one left without a batch re-scores the first and counts
    nothing, so that each rank makes the same forward passes (FSDP and ZeRO-3 gather
    weights inside them, every rank at once)."""
    every = eval_batches(num_pairs, batch_size)
    mine = every[rank::world]
    rounds = -(-len(every) // world)
    return [(mine[i], True) if i < len(mine) else (every[0], False) for i in range(rounds)]


@torch.no_grad()
def score_pairs(parts: ScoringParts, pairs: Sequence[TokenizedPair], batch_size: int, *,
                before_batch: Optional[Callable[[], None]] = None,
                progress: bool = False) -> dict[str, float]:
    """The means of the objective's metrics over ``pairs`` (TRL's names, e.g.
    ``rewards/accuracies``), ``loss`` as the training log computes it, and ``nll/chosen``,
    the token-mean NLL of the chosen completions; {} for no pairs. Every rank scores its
    share, the sums are all-reduced. Step 0 for every call: SamPO draws the same positions
    each time, so scores at different steps compare like with like. ``before_batch`` runs
    before each batch (a stop request abandons the scoring there)."""
    if not pairs:
        return {}
    acc, model = parts.accelerator, parts.model
    batches = rank_batches(len(pairs), batch_size, acc.process_index, acc.num_processes)
    if progress and acc.is_local_main_process:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring pairs", unit="batch", dynamic_ncols=True)
    was_training = model.training
    model.eval()
    window = MetricWindow()
    try:
        for batch, counted in batches:
            if before_batch is not None:
                before_batch()
            output, _ = batch_output(parts, [pairs[i] for i in batch], step=0)
            metrics = {**example_metrics(output),
                       "nll/chosen": (output.nll_sum, output.nll_tokens)}
            # Uncounted, the names still join: every rank all-reduces the same list.
            window.add(metrics if counted else {name: (0.0, 0) for name in metrics})
            pause(EVAL_DELAY_ENV)
    finally:
        model.train(was_training)
    means = add_component_losses(window.means(lambda tensor: all_reduce(acc, tensor)),
                                 parts.method.objective)
    means["loss"] = total_loss(means, parts.method.nll_weight)
    return means
