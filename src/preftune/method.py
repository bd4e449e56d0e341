"""MethodConfig -> the objective to run and its hyperparameters.

This is where the spellings users bring are reconciled: ``--method``; TRL's CPOConfig
(``loss_type`` with ``cpo_alpha`` choosing cpo / simpo / cpo-simpo, ``cpo_alpha`` defaulting
to 1.0 as there); the SimPO repository (``gamma_beta_ratio``, ``sft_weight``); and SimPO's
margin as ``gamma``, ``simpo_gamma`` or ``gamma_beta_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config import ConfigError, MethodConfig
from preftune.objectives import Objective, get_objective

# TRL CPOConfig loss types; with cpo_alpha > 0 "sigmoid" is CPO and "simpo" is CPO-SimPO.
_CPO_LOSS_TYPES = {"sigmoid": ("cpo", "cpo"), "simpo": ("simpo", "cpo-simpo"),
                   "hinge": ("hinge", "hinge"), "ipo": ("ipo", "ipo")}
_TRL_CPO_DEFAULT_ALPHA = 1.0


@dataclass
class ResolvedMethod:
    objective: Objective
    hparams: dict
    nll_weight: float
    reference_free: bool

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


def resolve_method(cfg: MethodConfig) -> ResolvedMethod:
    nll = _nll_weight(cfg)
    reference_free = cfg.reference_free
    if cfg.method:
        name = cfg.method
    elif cfg.loss_type:
        loss_type = cfg.loss_type.lower().replace("-", "_")
        if loss_type in _CPO_LOSS_TYPES:
            if nll is None:
                nll = _TRL_CPO_DEFAULT_ALPHA
            plain, with_nll = _CPO_LOSS_TYPES[loss_type]
            name = with_nll if nll > 0 else plain
            # TRL's CPO trainer has no reference model: its hinge and ipo are reference-free.
            reference_free = reference_free or loss_type in ("hinge", "ipo")
        else:
            name = loss_type
    elif cfg.gamma_beta_ratio is not None:
        name = "simpo"  # the SimPO repository's configs carry no loss_type
    else:
        raise ConfigError("no objective chosen: set --method (see `preftune methods`)")
    objective = get_objective(name)

    hparams = dict(objective.hyperparameters)
    if cfg.beta is not None:
        hparams["beta"] = cfg.beta
    gammas = {k: v for k, v in (("gamma", cfg.gamma), ("simpo_gamma", cfg.simpo_gamma)) if v is not None}
    if cfg.gamma_beta_ratio is not None:
        gammas["gamma_beta_ratio"] = cfg.gamma_beta_ratio * hparams.get("beta", 1.0)
    if len(set(gammas.values())) > 1:
        raise ConfigError(f"conflicting SimPO margins: {gammas} (gamma = gamma_beta_ratio x beta)")
    if gammas:
        if "gamma" not in hparams:
            raise ConfigError(f"{objective.name} has no margin gamma; drop {sorted(gammas)}")
        hparams["gamma"] = next(iter(gammas.values()))
    if cfg.label_smoothing:
        if "label_smoothing" not in hparams:
            raise ConfigError(f"{objective.name} defines no label smoothing")
        hparams["label_smoothing"] = cfg.label_smoothing
    if cfg.rdpo_alpha is not None:
        if "alpha" not in hparams:
            raise ConfigError("rdpo_alpha applies to method rdpo only")
        hparams["alpha"] = cfg.rdpo_alpha
    for key in ("desirable_weight", "undesirable_weight"):
        if key in hparams:
            hparams[key] = getattr(cfg, key)
    return ResolvedMethod(objective, hparams,
                          objective.nll_weight if nll is None else float(nll), reference_free)
