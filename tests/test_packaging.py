"""What an installed preftune needs: every package its source imports is declared in
pyproject.toml (as a dependency or in an extra), its recipes are package data, and its
modules import one another without a cycle."""

import ast
import fnmatch
import re
import sys

import pytest

from shared_paths import ROOT

tomllib = pytest.importorskip("tomllib")
SRC = ROOT / "src" / "preftune"
# Import names whose distribution is spelled otherwise.
DISTRIBUTION = {"yaml": "pyyaml"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def imports(path) -> list[tuple[int, str, list[str]]]:
    """``(level, module, names)`` of every import in the file, at any depth (imports
    inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [a.name for a in node.names]))
    return found


def test_every_imported_package_is_declared():
    project = pyproject()["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {re.split(r"[<>=!~\[ ;]", r)[0].lower().replace("_", "-") for r in requirements}
    imported = {name.split(".")[0] for path in SRC.rglob("*.py")
                for level, name, _ in imports(path) if level == 0 and name}
    third_party = imported - set(sys.stdlib_module_names) - {"preftune"}
    missing = {DISTRIBUTION.get(n, n).replace("_", "-") for n in third_party} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_matplotlib_is_the_report_extras():
    project = pyproject()["project"]
    assert not any(r.startswith("matplotlib") for r in project["dependencies"])
    assert any(r.startswith("matplotlib") for r in project["optional-dependencies"]["report"])


def test_every_recipe_is_package_data():
    patterns = pyproject()["tool"]["setuptools"]["package-data"]["preftune"]
    recipes = [p.relative_to(SRC).as_posix() for p in (SRC / "recipes").rglob("*.yaml")]
    assert recipes and all(any(fnmatch.fnmatch(r, g) for g in patterns) for r in recipes)
    assert (SRC / "recipes" / "__init__.py").is_file()  # importlib.resources finds them


def module_graph() -> dict[str, set[str]]:
    """preftune module -> the preftune modules it imports (a package import counts as
    its ``__init__``)."""
    modules = {".".join(("preftune", *p.relative_to(SRC).with_suffix("").parts))
               .removesuffix(".__init__"): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for level, module, names in imports(path):
            if level:
                base = package.rsplit(".", level - 1)[0] if level > 1 else package
                module = f"{base}.{module}" if module else base
            # ``from preftune import setup`` imports the module preftune.setup.
            for target in [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] \
                    or [module]:
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def test_no_import_cycle():
    graph, state, path, cycles = module_graph(), {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(cycles)
