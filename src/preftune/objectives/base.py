"""What an objective is: a pure formula plus the metadata the trainer reads.

The trainer never branches on an objective's name. It reads ``needs_reference`` to decide
whether to build (or load cached) reference log-probs, ``reduction`` to turn per-token
log-probs into per-sequence numbers, ``paired`` to pick the data layout, and
``nll_weight`` for the default weight of the chosen-completion NLL term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from preftune.errors import ConfigError
from preftune.types import ObjectiveTerms, ReducedLogps

LossFn = Callable[[ReducedLogps, Mapping[str, float]], ObjectiveTerms]

REDUCTIONS = ("sum", "mean", "sampo")


@dataclass(frozen=True)
class Objective:
    """A registered preference objective.

    Attributes:
        name: the name used by ``--method`` and in recipes.
        paper: citation (authors, year, arXiv id).
        equation: the per-example loss in plain text, as in the paper.
        needs_reference: whether a frozen reference model's log-probs are required.
        paired: True for (prompt, chosen, rejected) data, False for unpaired
            (prompt, completion, label) data.
        reduction: how per-token log-probs become one number per sequence.
        hyperparameters: names and defaults of the formula's hyperparameters.
        nll_weight: default weight of the chosen-completion NLL term (``cpo_alpha``).
        loss_fn: the pure formula, ``(ReducedLogps, hyperparameters) -> ObjectiveTerms``.
    """

    name: str
    paper: str
    equation: str
    needs_reference: bool
    paired: bool
    reduction: str
    loss_fn: LossFn
    hyperparameters: Mapping[str, float] = field(default_factory=dict)
    nll_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}: unknown reduction {self.reduction!r}")

    def __call__(self, reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
        return self.loss_fn(reduced, {**self.hyperparameters, **hparams})


REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in REGISTRY:
        raise ValueError(f"objective {objective.name!r} registered twice")
    REGISTRY[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    key = name.strip().lower().replace("_", "-")
    if key not in REGISTRY:
        import difflib

        hint = difflib.get_close_matches(key, REGISTRY, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"unknown method {name!r}{extra}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]
