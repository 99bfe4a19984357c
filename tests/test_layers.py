"""The layers that import-linter cannot see: the entry-point scripts and the test suite's edges.

import-linter (pyproject.toml) checks the packages: engine > modules | data > utils, no cycles
inside a package. The top-level scripts are not in a package, so this test reads their imports
(module level and inside functions) and asserts that they sit above the layers: they import the
layered packages and, for commands made of other commands (demo.py runs train.py and eval.py),
those commands, never the test suite or the benchmarks; and that no package imports an entry point.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERED = {"engine", "modules", "data", "utils"}
ROOT_COMMANDS = sorted(path.stem for path in ROOT.glob("*.py"))
SCRIPT_COMMANDS = sorted(f"scripts/{path.name}" for path in (ROOT / "scripts").glob("*.py") if path.stem != "__init__")
BENCHMARK_COMMANDS = sorted(f"benchmarks/{path.name}" for path in (ROOT / "benchmarks").glob("*.py"))
# What each kind of entry point may import from the project, beyond the layered packages.
ALLOWED_EXTRA = {"root": {"scripts", *ROOT_COMMANDS}, "scripts": {"scripts"}, "benchmarks": {"benchmarks"}}


def project_imports(path):
    """Top-level project names imported anywhere in the file (also inside functions)."""
    project = LAYERED | {"scripts", "benchmarks", "tests", *ROOT_COMMANDS}
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & project


@pytest.mark.parametrize("relative", [f"{name}.py" for name in ROOT_COMMANDS] + SCRIPT_COMMANDS + BENCHMARK_COMMANDS)
def test_entry_points_import_only_the_layers_below(relative):
    path = ROOT / relative
    kind = relative.split("/")[0] if "/" in relative else "root"
    allowed = LAYERED | ALLOWED_EXTRA[kind]
    imported = project_imports(path) - {path.stem}
    assert imported <= allowed, f"{relative} imports {sorted(imported - allowed)}, outside the layers below it"


def test_no_package_imports_an_entry_point():
    for package in sorted(LAYERED):
        for path in sorted((ROOT / package).rglob("*.py")):
            imported = project_imports(path)
            stray = imported - LAYERED
            assert not stray, f"{path.relative_to(ROOT)} imports the entry point(s) {sorted(stray)}"
