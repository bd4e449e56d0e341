"""An objective's hyperparameters as given (by any spelling it declares) -> checked values.

Shared by a single objective (objectives/method.py) and each component of a mixture
(objectives/options.py)."""

from __future__ import annotations

import math
from typing import Mapping

from preftune.errors import ConfigError
from preftune.objectives import (Objective, hyperparameter_spellings, objectives_taking)


def resolve_hyperparameters(objective: Objective, given: Mapping[str, float]) -> dict:
    """The objective's defaults with the given values, each checked against its declaration.
    A spelling the objective does not declare is refused, and the spellings of one
    hyperparameter must agree."""
    for spelling in given:
        if objective.declaration(spelling) is None:
            raise ConfigError(not_taken(objective, spelling))
    hparams = objective.defaults
    for declared in objective.hyperparameters:
        values = {s: declared.check(given[s], s)
                  for s in (declared.name, *declared.aliases) if s in given}
        for alias, base in declared.scaled_aliases:
            if alias in given:
                # The base is declared earlier (Objective checks), so it is resolved here.
                values[alias] = declared.check(given[alias] * hparams[base], f"{alias} x {base}")
        if not values:
            continue
        first = next(iter(values.values()))
        if any(not math.isclose(v, first, rel_tol=1e-9) for v in values.values()):
            scaled = "".join(f"; {declared.name} = {alias} x {base}"
                             for alias, base in declared.scaled_aliases)
            raise ConfigError(f"conflicting values for {declared.name}: {values} (spellings "
                              f"of one hyperparameter{scaled}): give one")
        hparams[declared.name] = first
    return hparams


def not_taken(objective: Objective, spelling: str) -> str:
    takers = objectives_taking(spelling)
    declared = hyperparameter_spellings().get(spelling)
    what = declared.doc if declared is not None else f"hyperparameter {spelling!r}"
    where = (f"{', '.join(takers)} take{'s' if len(takers) == 1 else ''} it" if takers
             else "no objective takes it")
    return (f"{spelling}: {objective.name} has no {what}; {where}. Drop {spelling}, or choose "
            "a method that takes it")
