"""MethodConfig -> the objective to run and its hyperparameters.

This is where the spellings users bring are reconciled: ``--method``; TRL's ``loss_type``
(as its CPOConfig reads it: ``cpo_alpha`` chooses cpo / simpo / cpo-simpo and defaults to
1.0; ipo and hinge without a reference. With a ``ref_model``, ipo and hinge are read as its
DPOConfig reads them: against the reference, no NLL term); the SimPO repository's
``gamma_beta_ratio`` and ``sft_weight``. Each hyperparameter is checked against the chosen
objective's declaration (objectives/hyperparameters.py): its bounds, and agreement between
its spellings (``gamma``, ``simpo_gamma``, ``gamma_beta_ratio`` x ``beta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

from preftune.config import ConfigError, MethodConfig
from preftune.objectives import (Objective, get_objective, hyperparameter_spellings,
                                 objectives_taking)

# TRL CPOConfig loss types; with cpo_alpha > 0 "sigmoid" is CPO and "simpo" is CPO-SimPO.
_CPO_LOSS_TYPES = {"sigmoid": ("cpo", "cpo"), "simpo": ("simpo", "cpo-simpo"),
                   "hinge": ("hinge", "hinge"), "ipo": ("ipo", "ipo")}
_TRL_CPO_DEFAULT_ALPHA = 1.0
# Loss types TRL's DPOTrainer also has: given a ref_model, the user means that reading.
_DPO_LOSS_TYPES = ("ipo", "hinge")


@dataclass
class ResolvedMethod:
    objective: Objective
    hparams: dict
    nll_weight: float
    reference_free: bool
    note: str = ""
    """How a ``loss_type`` spelling was read, for the run's log; empty for ``method``."""

    @property
    def needs_reference(self) -> bool:
        return self.objective.needs_reference and not self.reference_free

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in sorted(self.hparams.items())]
        if self.nll_weight:
            parts.append(f"nll_weight={self.nll_weight:g}")
        if self.reference_free:
            parts.append("reference_free")
        return f"{self.objective.name} ({', '.join(parts)})"


def _nll_weight(cfg: MethodConfig) -> float | None:
    if cfg.cpo_alpha is not None and cfg.sft_weight is not None and cfg.cpo_alpha != cfg.sft_weight:
        raise ConfigError("cpo_alpha and sft_weight name the same NLL weight; give one")
    return cfg.cpo_alpha if cfg.cpo_alpha is not None else cfg.sft_weight


def chooses_objective(cfg: MethodConfig) -> bool:
    """Whether the config names an objective (the SimPO repository's configs name none, but
    their ``gamma_beta_ratio`` says SimPO)."""
    return bool(cfg.method or cfg.loss_type or "gamma_beta_ratio" in cfg.hyperparameters)


def _from_loss_type(cfg: MethodConfig, nll: Optional[float], ref_model: Optional[str]
                    ) -> tuple[str, Optional[float], bool, str]:
    """(objective, NLL weight, reference_free, note) for TRL's ``loss_type``."""
    loss_type = cfg.loss_type.lower().replace("-", "_")
    if loss_type in _DPO_LOSS_TYPES and ref_model:
        return loss_type, nll, cfg.reference_free, (
            f"loss_type {loss_type} with ref_model: TRL DPOTrainer's {loss_type}, against "
            "the reference model" + ("" if nll else ", no NLL term"))
    if loss_type not in _CPO_LOSS_TYPES:
        return loss_type, nll, cfg.reference_free, ""
    nll = _TRL_CPO_DEFAULT_ALPHA if nll is None else nll
    plain, with_nll = _CPO_LOSS_TYPES[loss_type]
    name = with_nll if nll > 0 else plain
    # TRL's CPO trainer has no reference model: its hinge and ipo are reference-free.
    reference_free = cfg.reference_free or loss_type in _DPO_LOSS_TYPES
    note = (f"loss_type {loss_type}: TRL CPOTrainer's {name} (cpo_alpha {nll:g}"
            + (", no reference model; give ref_model for DPOTrainer's)" if loss_type in
               _DPO_LOSS_TYPES else ")"))
    return name, nll, reference_free, note


def resolve_method(cfg: MethodConfig, ref_model: Optional[str] = None) -> ResolvedMethod:
    """The objective and its checked hyperparameters. ``ref_model``: the run's reference
    model setting, which decides how ``loss_type`` ipo and hinge are read."""
    nll = _nll_weight(cfg)
    reference_free, note = cfg.reference_free, ""
    if cfg.method and cfg.loss_type:
        raise ConfigError(f"method {cfg.method!r} and loss_type {cfg.loss_type!r} both choose "
                          "the objective: give one (loss_type is TRL's spelling)")
    if cfg.method:
        name = cfg.method
    elif cfg.loss_type:
        name, nll, reference_free, note = _from_loss_type(cfg, nll, ref_model)
    elif "gamma_beta_ratio" in cfg.hyperparameters:
        name = "simpo"  # the SimPO repository's configs carry no loss_type
    else:
        raise ConfigError("no objective chosen: set --method (see `preftune methods`)")
    objective = get_objective(name)
    hparams = resolve_hyperparameters(objective, cfg.hyperparameters)
    return ResolvedMethod(objective, hparams,
                          objective.nll_weight if nll is None else float(nll), reference_free,
                          note)


def resolve_hyperparameters(objective: Objective, given: Mapping[str, float]) -> dict:
    """The objective's defaults with the given values, each checked against its declaration.
    A spelling the objective does not declare is refused, and the spellings of one
    hyperparameter must agree."""
    for spelling in given:
        if objective.declaration(spelling) is None:
            raise ConfigError(_not_taken(objective, spelling))
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


def _not_taken(objective: Objective, spelling: str) -> str:
    takers = objectives_taking(spelling)
    declared = hyperparameter_spellings().get(spelling)
    what = declared.doc if declared is not None else f"hyperparameter {spelling!r}"
    where = (f"{', '.join(takers)} take{'s' if len(takers) == 1 else ''} it" if takers
             else "no objective takes it")
    return (f"{spelling}: {objective.name} has no {what}; {where}. Drop {spelling}, or choose "
            "a method that takes it")
