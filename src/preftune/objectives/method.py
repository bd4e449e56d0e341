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

from dataclasses import dataclass, replace
from typing import Optional

from preftune.config import ConfigError, MethodConfig
from preftune.objectives import Objective, get_objective
from preftune.objectives.options import is_mixture, resolve_mixture, scoring_options
from preftune.objectives.resolve import resolve_hyperparameters
from preftune.objectives.weighting import ScoringOptions

# TRL CPOConfig loss types; with cpo_alpha > 0 "sigmoid" is CPO and "simpo" is CPO-SimPO.
_CPO_LOSS_TYPES = {"sigmoid": ("cpo", "cpo"), "simpo": ("simpo", "cpo-simpo"),
                   "hinge": ("hinge", "hinge"), "ipo": ("ipo", "ipo")}
_TRL_CPO_DEFAULT_ALPHA = 1.0
# Loss types TRL's DPOTrainer also has: given a ref_model, the user means that reading.
_DPO_LOSS_TYPES = ("ipo", "hinge")
# Keys of the SimPO repository's SimPOConfig that TRL's configs lack; and its default
# gamma_beta_ratio, used when its file gives no margin.
_SIMPO_REPO_KEYS = ("gamma_beta_ratio", "gamma")
_SIMPO_REPO_DEFAULT_RATIO = 0.25
_MARGIN_SPELLINGS = ("gamma", "simpo_gamma", "gamma_beta_ratio")


@dataclass
class ResolvedMethod:
    objective: Objective
    hparams: dict
    nll_weight: float
    reference_free: bool
    note: str = ""
    """How a ``loss_type`` spelling was read, for the run's log; empty for ``method``."""
    options: ScoringOptions = ScoringOptions()
    """The DPOConfig options around the formula (objectives/weighting.py)."""

    @property
    def needs_reference(self) -> bool:
        return self.objective.needs_reference and not self.reference_free

    def describe(self) -> str:
        off = {h.name for h in self.objective.hyperparameters
               if h.option and self.hparams.get(h.name) == h.default}
        parts = [f"{k}={v:g}" for k, v in sorted(self.hparams.items()) if k not in off]
        if self.nll_weight:
            parts.append(f"nll_weight={self.nll_weight:g}")
        if self.reference_free:
            parts.append("reference_free")
        parts.extend(self.options.describe())
        return f"{self.objective.name} ({', '.join(parts)})"


def _nll_weight(cfg: MethodConfig) -> float | None:
    if cfg.cpo_alpha is not None and cfg.sft_weight is not None and cfg.cpo_alpha != cfg.sft_weight:
        raise ConfigError("cpo_alpha and sft_weight name the same NLL weight; give one")
    return cfg.cpo_alpha if cfg.cpo_alpha is not None else cfg.sft_weight


def chooses_objective(cfg: MethodConfig) -> bool:
    """Whether the config names an objective, by name or by the keys of the trainer it was
    written for (the SimPO and CPO-SimPO repositories' configs often give no loss_type)."""
    return bool(cfg.method or cfg.loss_type or _simpo_repository_config(cfg)
                or _cpo_config(cfg))


def _simpo_repository_config(cfg: MethodConfig) -> bool:
    """Keys only the SimPO repository's SimPOConfig has (its run_simpo.py trains SimPO),
    with none of TRL's loss types but the two that config also knows."""
    keys = cfg.sft_weight is not None or any(k in cfg.hyperparameters for k in _SIMPO_REPO_KEYS)
    return keys and (cfg.loss_type or "sigmoid").lower() in ("sigmoid", "hinge")


def _cpo_config(cfg: MethodConfig) -> bool:
    """Keys only TRL's CPOConfig has (the CPO-SimPO repository's run_cpo.py reads it)."""
    return cfg.cpo_alpha is not None or "simpo_gamma" in cfg.hyperparameters


def _from_simpo_repository(cfg: MethodConfig, nll: Optional[float]
                           ) -> tuple[str, Optional[float], str]:
    """(objective, NLL weight, note) as the SimPO repository's trainer reads its config:
    loss ``sigmoid`` (its default) is SimPO, plus ``sft_weight`` x NLL when that is > 0;
    the margin is ``gamma`` (earlier files) or ``gamma_beta_ratio`` x beta (default 0.25)."""
    loss_type = (cfg.loss_type or "sigmoid").lower()
    if loss_type != "sigmoid":
        raise ConfigError(f"loss_type {cfg.loss_type!r} with the SimPO repository's keys "
                          f"({', '.join(_SIMPO_REPO_KEYS)}, sft_weight): its SimPOTrainer's "
                          "hinge variant is not available; use loss_type sigmoid (SimPO) or "
                          "method hinge")
    name = "cpo-simpo" if nll else "simpo"
    return name, nll or 0.0, (f"SimPO repository config: its SimPOTrainer's {loss_type} loss, "
                              f"{name}" + (f" with sft_weight {nll:g}" if nll else ""))


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
    if is_mixture(cfg):  # a loss_type list: objectives/options.py
        mixture = resolve_mixture(cfg)
        # Shown in the run's log and model card; each component runs with its own.
        shown = {k: v for c in reversed(mixture.components) for k, v in c.hparams.items()}
        return ResolvedMethod(mixture, shown, mixture.nll_weight, cfg.reference_free,
                              "loss_type list: TRL DPOConfig's weighted loss types",
                              scoring_options(cfg))
    nll = _nll_weight(cfg)
    reference_free, note = cfg.reference_free, ""
    simpo_repository = _simpo_repository_config(cfg)
    if cfg.method and cfg.loss_type:
        raise ConfigError(f"method {cfg.method!r} and loss_type {cfg.loss_type!r} both choose "
                          "the objective: give one (loss_type is TRL's spelling)")
    if cfg.method:
        name = cfg.method
    elif simpo_repository:
        name, nll, note = _from_simpo_repository(cfg, nll)
    elif cfg.loss_type:
        name, nll, reference_free, note = _from_loss_type(cfg, nll, ref_model)
    elif _cpo_config(cfg):
        # TRL's CPOConfig (and the CPO-SimPO repository's copy) default loss_type to sigmoid.
        name, nll, reference_free, note = _from_loss_type(
            replace(cfg, loss_type="sigmoid"), nll, ref_model)
        note = "no loss_type: CPOConfig's default, sigmoid; " + note
    else:
        raise ConfigError("no objective chosen: set --method (see `preftune methods`)")
    objective = get_objective(name)
    given = dict(cfg.hyperparameters)
    if name in ("simpo", "cpo-simpo") and simpo_repository and not any(
            k in given for k in _MARGIN_SPELLINGS):
        given["gamma_beta_ratio"] = _SIMPO_REPO_DEFAULT_RATIO
    hparams = resolve_hyperparameters(objective, given)
    return ResolvedMethod(objective, hparams,
                          objective.nll_weight if nll is None else float(nll), reference_free,
                          note, scoring_options(cfg))
