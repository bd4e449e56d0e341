"""The source stays readable at a glance: no function in src/ runs past 60 lines."""

import ast

from shared_paths import ROOT

MAX_LINES = 60


def test_no_function_over_60_lines():
    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split these: " + ", ".join(long)
