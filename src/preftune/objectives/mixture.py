"""A weighted list of registered objectives sharing one forward pass (TRL's DPOConfig
``loss_type: [sigmoid, bco_pair, sft]`` with ``loss_weights: [0.8, 0.2, 1.0]``, MPO).

The mixture's per-example preference loss is ``sum_i w_i l_i`` and its NLL weight
``sum_i w_i nll_weight_i`` (sft's 1, cpo's alpha ...), so the step loss stays a sum of
per-example terms plus one token-mean NLL term, and gradient accumulation stays exact
(objectives/compute.py). Each component is reduced as it declares (IPO on mean log-probs,
DPO on sums) from the same per-token log-probs. It needs a reference when any component
does, and every component must be paired.

Logged: ``loss/<name>`` per component, unweighted by its mixture weight: its per-example
preference loss plus, once the window's means are known, its NLL weight times the token-mean
NLL (:func:`add_component_losses`); ``loss`` is then ``sum_i w_i loss/<name_i>``. Rewards and
log-prob metrics are the first component's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from preftune.objectives.base import Objective
from preftune.types import ObjectiveTerms


@dataclass(frozen=True)
class Component:
    """One objective of a mixture, its resolved hyperparameters and its weight. ``label``
    names it in the metrics (``loss/<label>``): the spelling the config gave."""

    objective: Objective
    hparams: Mapping[str, float]
    weight: float
    label: str


@dataclass(frozen=True)
class Mixture:
    """Reads like an :class:`Objective` to the trainer, scorer and model card (name, paper,
    equation, needs_reference, paired, nll_weight); compute.py runs its components."""

    components: tuple[Component, ...]
    reduction: str = "mixture"
    hyperparameters: tuple = ()

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError("a mixture needs at least one objective")
        unpaired = [c.label for c in self.components if not c.objective.paired]
        if unpaired:
            raise ValueError(f"a mixture takes paired objectives only: {', '.join(unpaired)} "
                             "is unpaired")
        labels = [c.label for c in self.components]
        if len(set(labels)) != len(labels):
            raise ValueError(f"a mixture names each objective once: {labels}")

    @property
    def name(self) -> str:
        return " + ".join(f"{c.weight:g} {c.objective.name}" for c in self.components)

    @property
    def paper(self) -> str:
        return "; ".join(f"{c.objective.name}: {c.objective.paper}" for c in self.components)

    @property
    def equation(self) -> str:
        return " + ".join(f"{c.weight:g} x [{c.objective.equation}]" for c in self.components)

    @property
    def needs_reference(self) -> bool:
        return any(c.objective.needs_reference for c in self.components)

    @property
    def paired(self) -> bool:
        return True

    @property
    def batch_coupled(self) -> bool:
        return any(getattr(c.objective, "batch_coupled", False) for c in self.components)

    @property
    def nll_weight(self) -> float:
        return sum(c.weight * c.objective.nll_weight for c in self.components)


def combine(mixture: Mixture, parts: list[ObjectiveTerms]) -> ObjectiveTerms:
    """``sum_i w_i l_i`` per example, each component's own losses kept as ``loss/<label>``
    metrics (per example, so they average exactly like the total)."""
    losses = sum(c.weight * terms.losses for c, terms in zip(mixture.components, parts))
    metrics: dict[str, torch.Tensor] = {}
    for component, terms in zip(mixture.components, parts):
        metrics.update(terms.metrics)
        metrics[f"loss/{component.label}"] = terms.losses.detach()
    first = parts[0]
    return ObjectiveTerms(losses=losses, chosen_rewards=first.chosen_rewards,
                          rejected_rewards=first.rejected_rewards, metrics=metrics)


def add_component_losses(means: dict[str, float], objective) -> dict[str, float]:
    """Adds each NLL-bearing component's ``nll_weight x nll_loss`` to its ``loss/<label>``
    mean (the NLL is a token mean over the window, known only here). No-op for a single
    objective. Returns ``means``."""
    if not isinstance(objective, Mixture) or "nll_loss" not in means:
        return means
    for component in objective.components:
        key = f"loss/{component.label}"
        if component.objective.nll_weight and key in means:
            means[key] += component.objective.nll_weight * means["nll_loss"]
    return means
