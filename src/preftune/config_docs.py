"""Every config key with its type, default, accepted values and doc, generated from what
declares them: the section dataclasses of config.py (each field's docstring, read from the
source), the checks of validation.py and the objectives' hyperparameter declarations.

``preftune train --help`` prints :func:`train_help`; docs/config.md is :func:`markdown`
(``python -m preftune.config_docs docs/config.md`` rewrites it, and a test keeps it current).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from preftune.config import ALIASES, IGNORED_KEYS, SECTIONS, _base_type
from preftune.objectives import REGISTRY, hyperparameter_spellings, objectives_taking
from preftune.validation import BOUNDS, CHOICES


@dataclass(frozen=True)
class KeyDoc:
    key: str
    kind: str
    default: str
    values: str
    doc: str

    @property
    def summary(self) -> str:
        """The doc's first sentence, on one line."""
        first = self.doc.split(". ")[0].rstrip(".")
        return first + "." if first else ""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring: the string literal right after the field in the class
    body (the convention of config.py, as in TRL's configs)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def section_keys(section: str) -> list[KeyDoc]:
    cls, rows = SECTIONS[section], []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name == "hyperparameters":
            continue  # listed one by one, from the objectives' declarations
        kind = _base_type(f.type)
        kind = {dict: "mapping", list: "list"}.get(kind, getattr(kind, "__name__", "any"))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values = (" | ".join(CHOICES[f.name]) if f.name in CHOICES
                  else str(BOUNDS[f.name]) if f.name in BOUNDS else "")
        rows.append(KeyDoc(f.name, kind.replace("Any", "any"), _show(default), values,
                           docs.get(f.name, "")))
    return rows


def hyperparameter_keys() -> list[KeyDoc]:
    """One row per spelling an objective declares; the default per objective."""
    rows = []
    for spelling, declared in hyperparameter_spellings().items():
        defaults: dict[str, list[str]] = {}
        # One spelling may mean different things to different objectives (``alpha``: R-DPO's
        # length weight, AlphaPO's reward shape): each meaning and its bounds are listed.
        meanings: dict[tuple[str, str], list[str]] = {}
        for name in objectives_taking(spelling):
            taken = REGISTRY[name].declaration(spelling)
            defaults.setdefault(_show(taken.default), []).append(name)
            meanings.setdefault((taken.doc, str(taken.bounds)), []).append(name)
        default = "; ".join(f"{v} ({', '.join(names)})" for v, names in defaults.items())
        doc = " ".join(f"{text[0].upper()}{text[1:]}" + (f" ({', '.join(names)})" if
                       len(meanings) > 1 else "") + "." for (text, _), names in meanings.items())
        scaled = dict(declared.scaled_aliases)
        if spelling in declared.aliases:
            doc = f"Another spelling of {declared.name}. {doc}"
        elif spelling in scaled:
            doc = f"{declared.name} / {scaled[spelling]}: {declared.name} = {spelling} x " \
                  f"{scaled[spelling]}. {doc}"
        if spelling in scaled:
            default = values = "-"
        else:
            within: dict[str, list[str]] = {}
            for (_, bounds), names in meanings.items():
                within.setdefault(bounds, []).extend(names)
            values = "; ".join(bounds + (f" ({', '.join(sorted(names))})" if len(within) > 1
                                         else "") for bounds, names in within.items())
        rows.append(KeyDoc(spelling, declared.type.__name__, default, values, doc))
    return rows


def _others() -> tuple[str, str]:
    aliases = ", ".join(f"{alias} = {key}" for alias, key in sorted(ALIASES.items()))
    return aliases, ", ".join(sorted(IGNORED_KEYS))


HYPERPARAMETERS_NOTE = ("the chosen objective's hyperparameters; one that the objective "
                        "does not take is refused (`preftune methods` lists each objective's)")


def train_help() -> str:
    """``preftune train --help``: every key, grouped by section."""
    lines = ["usage: preftune train [--config RECIPE.yaml] [--key value ...]", "",
             "Keys may come from a YAML recipe (flat, or grouped by section) and from the "
             "command line (--key value, --key=value, a bare --flag for true); the command "
             "line wins. docs/config.md has this list with the full docs.", ""]
    groups = [(name, section_keys(name)) for name in SECTIONS]
    groups.insert(3, (f"method hyperparameters: {HYPERPARAMETERS_NOTE}", hyperparameter_keys()))
    for title, rows in groups:
        lines.append(f"{title}:")
        for row in rows:
            values = f"; {row.values}" if row.values else ""
            lines.append(f"  --{row.key} {row.kind.upper()} (default {row.default}{values})")
            lines.append(f"      {row.summary}")
        lines.append("")
    aliases, ignored = _others()
    wrap = textwrap.TextWrapper(width=90, initial_indent="  ", subsequent_indent="  ")
    lines += ["other spellings:", *wrap.wrap(aliases), "",
              "accepted and ignored (keys of TRL's and the SimPO repository's configs that "
              "have no effect here; listed when a run starts):", *wrap.wrap(ignored)]
    return "\n".join(lines)


def _table(rows: list[KeyDoc], default_title: str = "default") -> list[str]:
    out = [f"| key | type | {default_title} | values | description |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"`{r.key}`", r.kind, r.default, r.values, r.doc]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def markdown() -> str:
    """docs/config.md."""
    lines = ["# Configuration keys", "",
             "Generated by `python -m preftune.config_docs docs/config.md` from the config "
             "dataclasses (src/preftune/config.py), the checks of src/preftune/validation.py "
             "and the objectives' hyperparameter declarations; `preftune train --help` prints "
             "the same list. A YAML recipe may be flat or grouped under these section names; "
             "every key is also a command-line option (`--key value`). Each value is checked "
             "before any tokenizer, data or model is loaded.", ""]
    for name in SECTIONS:
        lines += [f"## {name}", "", *_table(section_keys(name)), ""]
        if name == "method":
            lines += ["## method hyperparameters", "", HYPERPARAMETERS_NOTE[0].upper()
                      + HYPERPARAMETERS_NOTE[1:] + ".", "",
                      *_table(hyperparameter_keys(), "default (objectives)"), ""]
    aliases, ignored = _others()
    lines += ["## Other spellings", "", aliases + ".", "",
              "## Accepted and ignored", "",
              "Keys of TRL's and the SimPO repository's configs that have no effect here; "
              "accepted so their YAML files run unchanged, and listed when a run starts: "
              + ignored + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(markdown()) if len(sys.argv) > 1 else print(markdown())
