"""Preference objectives. Importing this package registers every objective in ``REGISTRY``.

To add one: write its formula in a small module (see ``sigmoid_family.py``), call
``register(Objective(...))`` there, and import the module below.
"""

from preftune.objectives.base import REGISTRY, Objective, get_objective, register
from preftune.objectives.compute import compute_objective, example_metrics, step_loss

# Imported for their side effect: each module registers its objectives.
from preftune.objectives import kto, margin_family, orpo, sft, sigmoid_family  # noqa: F401,E402

__all__ = ["REGISTRY", "Objective", "get_objective", "register", "compute_objective",
           "step_loss", "example_metrics"]
