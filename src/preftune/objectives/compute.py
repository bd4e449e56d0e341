"""From per-token log-probs to the loss of one micro-batch.

The preference term is a mean over the examples of the *optimizer step* and the NLL term a
mean over all chosen completion tokens of the optimizer step (TRL's CPOTrainer takes the
same token mean per batch; here it spans the whole step), so each
micro-batch contributes ``sum(per-example losses) / examples_in_step`` and
``sum(token NLL) / chosen_tokens_in_step``. Summing those over micro-batches (and ranks)
gives exactly the loss of one large batch: gradient accumulation is then exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from preftune.forward.reduction import reduce_logps
from preftune.objectives.base import Objective
from preftune.objectives.mixture import Component, Mixture, combine
from preftune.objectives.weighting import ScoringOptions, apply_f_divergence, wpo_weights
from preftune.types import ObjectiveTerms, ReducedLogps, SequenceLogps

NO_OPTIONS = ScoringOptions()


@dataclass
class ObjectiveOutput:
    """The objective's terms for one micro-batch plus what the step loss and metrics need."""

    terms: ObjectiveTerms
    reduced: ReducedLogps
    nll_sum: torch.Tensor  # sum over NLL tokens of -log pi(token)
    nll_tokens: torch.Tensor  # how many tokens nll_sum covers
    nll_weight: float


def nll_token_mask(policy: SequenceLogps, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The tokens the NLL term covers: chosen completions (desirable ones for unpaired data)."""
    if labels is None:
        return policy.chosen_mask
    return policy.chosen_mask & labels.bool().unsqueeze(-1)


def compute_objective(objective: Objective | Mixture, hparams: Mapping[str, float],
                      policy: SequenceLogps, reference: Optional[SequenceLogps] = None, *,
                      example_ids: Sequence[int] = (), seed: int = 0, step: int = 0,
                      labels: Optional[torch.Tensor] = None,
                      nll_weight: Optional[float] = None,
                      reference_free: bool = False,
                      options: ScoringOptions = NO_OPTIONS) -> ObjectiveOutput:
    """Reduce, apply the objective's formula, and compute the NLL sums (not yet normalised).

    ``reference_free`` scores a reference-based objective against a uniform reference
    (all reference log-probs 0), as TRL's ``reference_free`` flag and its CPO trainer do.
    A :class:`Mixture` runs each component on its own reduction of the same log-probs
    (``hparams`` is then unused: each component carries its own). ``options``: the DPOConfig
    options of objectives/weighting.py, applied around every component's formula.
    """
    if objective.needs_reference and reference is None:
        if not reference_free:
            raise ValueError(f"method {objective.name!r} needs reference log-probs")
        reference = SequenceLogps(torch.zeros_like(policy.chosen), policy.chosen_mask,
                                  torch.zeros_like(policy.rejected), policy.rejected_mask)
    components = (objective.components if isinstance(objective, Mixture)
                  else (Component(objective, hparams, 1.0, objective.name),))
    reductions: dict[str, ReducedLogps] = {}
    for kind in dict.fromkeys(c.objective.reduction for c in components):
        reductions[kind] = apply_f_divergence(reduce_logps(
            kind, policy, reference, example_ids=example_ids, seed=seed, step=step,
            labels=labels, ld_alpha=options.ld_alpha), options)
    parts = [c.objective(reductions[c.objective.reduction], c.hparams) for c in components]
    if options.use_weighting:
        weights = wpo_weights(policy)
        for terms in parts:
            terms.losses = terms.losses * weights
        parts[0].metrics["wpo/weights"] = weights
    terms = combine(objective, parts) if isinstance(objective, Mixture) else parts[0]
    mask = nll_token_mask(policy, labels)
    return ObjectiveOutput(
        terms=terms,
        reduced=reductions[components[0].objective.reduction],
        nll_sum=-(policy.chosen * mask).sum(),
        nll_tokens=mask.sum(),
        nll_weight=objective.nll_weight if nll_weight is None else float(nll_weight),
    )


def step_loss(output: ObjectiveOutput, *, examples_in_step: float, nll_tokens_in_step: float,
              aux_loss: Optional[torch.Tensor] = None, aux_loss_coef: float = 0.0) -> torch.Tensor:
    """This micro-batch's share of the optimizer step's loss (see the module docstring)."""
    loss = output.terms.losses.sum() / examples_in_step
    if output.nll_weight:
        loss = loss + output.nll_weight * output.nll_sum / max(nll_tokens_in_step, 1.0)
    if aux_loss is not None and aux_loss_coef:
        # The router loss is a per-forward mean already; weight it by this micro-batch's
        # share of the step's examples so accumulation still sums to one batch's value.
        share = output.terms.losses.numel() / examples_in_step
        loss = loss + aux_loss_coef * aux_loss * share
    return loss


def example_metrics(output: ObjectiveOutput) -> dict[str, tuple[torch.Tensor, int]]:
    """Per-micro-batch ``{name: (sum, count)}`` so any number of micro-batches, ranks and
    logging steps average exactly. Names follow TRL's so dashboards carry over."""
    terms, reduced = output.terms, output.reduced
    n = terms.losses.numel()
    with torch.no_grad():
        out: dict[str, tuple[torch.Tensor, int]] = {}
        if reduced.labels is None:
            chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
            out["rewards/chosen"] = (chosen.sum(), n)
            out["rewards/rejected"] = (rejected.sum(), n)
            out["rewards/accuracies"] = ((chosen > rejected).float().sum(), n)
            out["rewards/margins"] = ((chosen - rejected).sum(), n)
            out["logps/chosen"] = (reduced.chosen.sum(), n)
            out["logps/rejected"] = (reduced.rejected.sum(), n)
            out["lengths/chosen"] = (reduced.chosen_lengths.float().sum(), n)
            out["lengths/rejected"] = (reduced.rejected_lengths.float().sum(), n)
        else:
            # Unpaired (KTO): "chosen" means desirable completions, "rejected" undesirable.
            desirable = reduced.labels.bool()
            for name, keep in (("chosen", desirable), ("rejected", ~desirable)):
                count = int(keep.sum())
                out[f"rewards/{name}"] = (terms.chosen_rewards[keep].sum(), count)
                out[f"logps/{name}"] = (reduced.chosen[keep].sum(), count)
                out[f"lengths/{name}"] = (reduced.chosen_lengths[keep].float().sum(), count)
        for name, values in terms.metrics.items():
            out[name] = (values.detach().float().sum(), values.numel())
        if output.nll_weight:
            out["nll_loss"] = (output.nll_sum.detach(), int(output.nll_tokens))
        out["loss/preference"] = (terms.losses.detach().sum(), n)
    return out
