"""Recipes installed with preftune: one YAML per method with its paper's hyperparameters,
each opening with the command that runs it, and small CPU runs under ``cpu/``.

    preftune recipes                       # names, one line each
    preftune train --config simpo          # a bundled recipe, by name
    preftune train --config recipes/simpo.yaml   # the same file, from a checkout

``--config`` takes a file first; a name that is no file is looked up here (``simpo``,
``simpo.yaml``, ``recipes/simpo.yaml``, ``cpu/simpo-hh-rlhf``).
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SUFFIX = ".yaml"


def bundled() -> dict[str, Traversable]:
    """Name (``simpo``, ``cpu/simpo-hh-rlhf``) -> recipe file, sorted by name."""
    found = {}
    for entry in files(__name__).iterdir():
        if entry.is_dir():
            found.update({f"{entry.name}/{sub.name[:-len(SUFFIX)]}": sub
                          for sub in entry.iterdir() if sub.name.endswith(SUFFIX)})
        elif entry.name.endswith(SUFFIX):
            found[entry.name[:-len(SUFFIX)]] = entry
    return dict(sorted(found.items()))


def summary(recipe: Traversable) -> str:
    """The recipe's first comment line: what it trains, on what, after which paper."""
    for line in recipe.read_text().splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text:
            return text
    return ""


def find(name: str) -> Optional[Traversable]:
    """The bundled recipe ``name`` names, with or without ``recipes/`` and ``.yaml``."""
    key = name.removeprefix("recipes/").removesuffix(SUFFIX)
    return bundled().get(key)


def listing() -> str:
    """``preftune recipes``: each name and its summary, one line each."""
    recipes = bundled()
    width = max(map(len, recipes))
    return "\n".join(f"{name:<{width}}  {summary(recipe)}" for name, recipe in recipes.items())
