"""What an objective is: a pure formula plus the metadata the trainer reads.

The trainer never branches on an objective's name. It reads ``needs_reference`` to decide
whether to build (or load cached) reference log-probs, ``reduction`` to turn per-token
log-probs into per-sequence numbers, ``paired`` to pick the data layout, and
``nll_weight`` for the default weight of the chosen-completion NLL term. The config and the
command line read ``hyperparameters`` (objectives/hyperparameters.py) for the keys they
accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from preftune.errors import ConfigError
from preftune.objectives.hyperparameters import HyperParameter
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
        hyperparameters: the formula's hyperparameters, declared with their defaults,
            bounds and other spellings.
        nll_weight: default weight of the chosen-completion NLL term (``cpo_alpha``).
        loss_fn: the pure formula, ``(ReducedLogps, hyperparameters) -> ObjectiveTerms``.
        batch_coupled: an example's loss depends on the other examples of its call (a
            batch statistic: KTO's reference point, BCO's reward shift; or a sort over the
            batch: AOT). Such a formula sees one micro-batch on one process, so gradient
            accumulation and data parallelism change its loss; every other objective's
            accumulated loss equals one large batch's exactly.
    """

    name: str
    paper: str
    equation: str
    needs_reference: bool
    paired: bool
    reduction: str
    loss_fn: LossFn
    hyperparameters: tuple[HyperParameter, ...] = ()
    nll_weight: float = 0.0
    batch_coupled: bool = False

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}: unknown reduction {self.reduction!r}")
        spellings = [s for h in self.hyperparameters for s in h.spellings]
        if len(spellings) != len(set(spellings)):
            raise ValueError(f"{self.name}: a hyperparameter spelling is declared twice")
        for k, declared in enumerate(self.hyperparameters):
            earlier = {h.name for h in self.hyperparameters[:k]}
            # A scaled spelling is resolved from its base's value: the base comes first.
            if any(base not in earlier for _, base in declared.scaled_aliases):
                raise ValueError(f"{self.name}: {declared.name}'s scaled spellings need their "
                                 "base hyperparameter declared before it")

    @property
    def defaults(self) -> dict[str, float]:
        return {h.name: h.default for h in self.hyperparameters}

    def declaration(self, spelling: str) -> Optional[HyperParameter]:
        """The hyperparameter ``spelling`` names here (its name or another tool's), if any."""
        return next((h for h in self.hyperparameters if spelling in h.spellings), None)

    def __call__(self, reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
        return self.loss_fn(reduced, {**self.defaults, **hparams})


REGISTRY: dict[str, Objective] = {}
# The config's own keys, which preftune.config reserves when it loads (this package stays
# below the config: it never imports it). Each hyperparameter spelling becomes a config
# key, so it must not already be one.
RESERVED_KEYS: set[str] = set()


def register(objective: Objective) -> Objective:
    if objective.name in REGISTRY:
        raise ValueError(f"objective {objective.name!r} registered twice")
    _check_spellings(objective)
    REGISTRY[objective.name] = objective
    return objective


def reserve_keys(keys) -> None:
    """The config's keys: no objective, registered before or after, may spell one."""
    RESERVED_KEYS.update(keys)
    for objective in REGISTRY.values():
        _check_spellings(objective)


def _check_spellings(objective: Objective) -> None:
    taken = [s for h in objective.hyperparameters for s in h.spellings if s in RESERVED_KEYS]
    if taken:
        raise ValueError(f"{objective.name}: hyperparameter spellings {taken} are config keys")


def objectives_taking(spelling: str) -> list[str]:
    """Names of the registered objectives that declare ``spelling``."""
    return sorted(o.name for o in REGISTRY.values() if o.declaration(spelling))


def hyperparameter_spellings() -> dict[str, HyperParameter]:
    """Every spelling some registered objective declares -> its first declaration (for the
    value's type; the bounds checked are those of the objective that runs)."""
    found: dict[str, HyperParameter] = {}
    for objective in REGISTRY.values():
        for declared in objective.hyperparameters:
            for spelling in declared.spellings:
                found.setdefault(spelling, declared)
    return found


def get_objective(name: str) -> Objective:
    key = name.strip().lower().replace("_", "-")
    if key not in REGISTRY:
        import difflib

        hint = difflib.get_close_matches(key, REGISTRY, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"unknown method {name!r}{extra}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]
