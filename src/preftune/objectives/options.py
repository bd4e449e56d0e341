"""MethodConfig's DPOConfig keys -> a :class:`Mixture` and the run's :class:`ScoringOptions`.

A ``loss_type`` list (YAML ``[sigmoid, bco_pair, sft]``; ``sigmoid,bco_pair,sft`` on the
command line), or any ``loss_weights``, is read as TRL's DPOConfig reads ``loss_type``: only
that config has lists and weights, so ``sigmoid`` is DPO (not CPOConfig's CPO) and every
other name is the registered objective of that name (``bco_pair`` -> ``bco-pair``). Each
hyperparameter given goes to the components that declare it (TRL shares one ``beta``); one
that no component declares is refused.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from preftune.errors import ConfigError
from preftune.objectives.base import get_objective
from preftune.objectives.mixture import Component, Mixture
from preftune.objectives.resolve import not_taken, resolve_hyperparameters
from preftune.objectives.weighting import ScoringOptions

# TRL DPOConfig loss_type names whose preftune objective has another name.
DPO_LOSS_TYPE_NAMES = {"sigmoid": "dpo"}


def scoring_options(cfg) -> ScoringOptions:
    return ScoringOptions(use_weighting=bool(cfg.use_weighting), ld_alpha=cfg.ld_alpha,
                          f_divergence_type=cfg.f_divergence_type,
                          f_alpha_divergence_coef=float(cfg.f_alpha_divergence_coef))


def _names(value: Any) -> Optional[list[str]]:
    """The ``loss_type`` list, or None for one name (a comma string is a list)."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(",")] if "," in value else None
    if isinstance(value, (list, tuple)):
        return [str(p).strip() for p in value]
    return None


def is_mixture(cfg) -> bool:
    return _names(cfg.loss_type) is not None or cfg.loss_weights is not None


def _weights(cfg, count: int) -> list[float]:
    given = cfg.loss_weights
    if given is None:
        return [1.0] * count
    values: list[Any] = []
    for item in given if isinstance(given, (list, tuple)) else [given]:
        values.extend(item.split(",") if isinstance(item, str) else [item])
    try:
        weights = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"loss_weights: expected numbers, got {given!r}") from None
    if len(weights) != count:
        raise ConfigError(f"loss_weights: {len(weights)} weights for {count} loss types "
                          f"({cfg.loss_type!r}); give one weight per loss_type")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ConfigError(f"loss_weights: each weight must be a finite number >= 0, got "
                          f"{weights}")
    return weights


def resolve_mixture(cfg) -> Mixture:
    """The mixture a ``loss_type`` list (with ``loss_weights``) names, hyperparameters
    checked per component (objectives/resolve.py)."""
    if cfg.method:
        raise ConfigError(f"method {cfg.method!r} and loss_type {cfg.loss_type!r} both choose "
                          "the objective: give one (loss_type is TRL's spelling)")
    names = _names(cfg.loss_type) or ([cfg.loss_type] if cfg.loss_type else [])
    if not names or not all(names):
        raise ConfigError(f"loss_weights {cfg.loss_weights!r} without a loss_type list: give "
                          "loss_type, e.g. [sigmoid, bco_pair, sft]")
    if cfg.cpo_alpha is not None or cfg.sft_weight is not None:
        raise ConfigError("cpo_alpha/sft_weight with a loss_type list: add sft to loss_type "
                          "with its weight in loss_weights instead")
    objectives = [get_objective(DPO_LOSS_TYPE_NAMES.get(n.lower(), n)) for n in names]
    given = dict(cfg.hyperparameters)
    for spelling in given:
        if not any(o.declaration(spelling) for o in objectives):
            raise ConfigError(not_taken(objectives[0], spelling))
    components = []
    for name, objective, weight in zip(names, objectives, _weights(cfg, len(names))):
        mine = {k: v for k, v in given.items() if objective.declaration(k) is not None}
        components.append(Component(objective, resolve_hyperparameters(objective, mine),
                                    weight, name.lower()))
    try:
        return Mixture(tuple(components))
    except ValueError as error:
        raise ConfigError(f"loss_type {cfg.loss_type!r}: {error}") from None
