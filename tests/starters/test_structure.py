"""How starters/ is put together: its modules import each other in layers,
never in a circle (a module-level or a function-level import alike), so any
of them can be imported first; and `cardflow status` knows the status query
of every workflow type the workers run."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The gateway's package is laid out on its own and imports the process
# modules by name; it is not one of the modules checked here.
PACKAGES = ("starters", "starters/devstack")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(module: str, is_package: bool, tree: ast.AST) -> set[str]:
    """Every module name an import anywhere in `tree` may load, with the
    packages it loads on the way (`import a.b.c` loads a, a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` loads a, and a.b where b is a module.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            names.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return names


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of `packages` (folders under `root`) -> the modules of the
    same set it imports, at any depth of its code."""
    paths = {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).glob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = imported_names(module, path.name == "__init__.py", tree)
        graph[module] = {name for name in imported if name in paths and name != module}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its first module repeated at its end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle: list[str] = list(reversed(error.args[1]))
        return cycle
    return None


def test_no_module_of_starters_imports_itself_through_others() -> None:
    graph = import_graph(PROJECT_ROOT, PACKAGES)
    assert "starters.cli" in graph and "starters.devstack.stack" in graph
    cycle = cycle_in(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("a_imports", "b_imports"),
    [
        ("from pkg import b\n", "from pkg.a import value\n"),
        ("def f() -> None:\n    from pkg import b\n", "import pkg.a\n"),
        ("from . import b\n", "def g() -> None:\n    from .a import value\n"),
    ],
    ids=["top-level", "in-a-function", "relative"],
)
def test_the_check_finds_a_cycle_however_the_imports_are_written(
    tmp_path: Path, a_imports: str, b_imports: str
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(a_imports + "value = 1\n")
    (package / "b.py").write_text(b_imports)
    (package / "c.py").write_text("from pkg import a\n")
    cycle = cycle_in(import_graph(tmp_path, ("pkg",)))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}
    assert cycle[0] == cycle[-1]


def test_cardflow_status_knows_the_status_query_of_every_workflow_type_the_workers_run() -> None:
    from temporalio import workflow

    from workflows.catalog import ALL_WORKFLOWS, STATUS_QUERIES

    by_type = {workflow._Definition.must_from_class(cls).name: cls for cls in ALL_WORKFLOWS}
    assert set(STATUS_QUERIES) == set(by_type)
    for workflow_type, query in STATUS_QUERIES.items():
        assert query.__qualname__ == f"{by_type[workflow_type].__qualname__}.status"
