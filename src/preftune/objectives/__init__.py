"""Preference objectives. Importing this package registers every objective in ``REGISTRY``.

To add one: write its formula in a small module (see ``sigmoid_family.py``), declare its
hyperparameters there (``HyperParameter``: default, bounds, other tools' spellings), call
``register(Objective(...))``, and import the module below. The config, the command line
(``--name value``), ``preftune methods`` and docs/config.md read the declaration.
"""

from preftune.objectives.base import (REGISTRY, Objective, get_objective,
                                      hyperparameter_spellings, objectives_taking, register)
from preftune.objectives.compute import compute_objective, example_metrics, step_loss
from preftune.objectives.hyperparameters import HyperParameter

# Imported for their side effect: each module registers its objectives.
from preftune.objectives import kto, margin_family, orpo, sft, sigmoid_family  # noqa: F401,E402
from preftune.objectives import aot, apo, bco, discopop, dpo_variants  # noqa: F401,E402

__all__ = ["REGISTRY", "Objective", "HyperParameter", "get_objective", "register",
           "hyperparameter_spellings", "objectives_taking", "compute_objective", "step_loss",
           "example_metrics"]
