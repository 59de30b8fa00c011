"""The house has two floors and imports run one way (docs/design.md): the libraries
(``pipeline/ annotate/ dataset/ model/ trainer/``) never import the applications
(``multishot.generate``, ``multishot.evaluate``, ``multishot.distill``) or the command line
(``multishot.cli``), and no two packages import each other, directly or around a loop.

Imports are read from the source with ``ast`` (function-level and ``TYPE_CHECKING`` imports
included), so a lazy import inside a function cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package → its folder (pyproject's package-dir mapping)
PACKAGES = {
    "multishot.pipeline": REPO / "pipeline",
    "multishot.annotate": REPO / "annotate",
    "multishot.dataset": REPO / "dataset",
    "multishot.model": REPO / "model",
    "multishot.trainer": REPO / "trainer",
    "multishot.generate": REPO / "multishot" / "generate",
    "multishot.evaluate": REPO / "multishot" / "evaluate",
    "multishot.distill": REPO / "multishot" / "distill",
    "multishot.cli": REPO / "multishot" / "cli",
}
LIBRARIES = ["multishot.pipeline", "multishot.annotate", "multishot.dataset", "multishot.model",
             "multishot.trainer"]
APPLICATIONS = ["multishot.generate", "multishot.evaluate", "multishot.distill", "multishot.cli"]


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (relative imports
    resolved against ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from multishot import cli` names the package cli
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def owner(module: str) -> str | None:
    """The package of :data:`PACKAGES` that ``module`` belongs to, or None."""
    for package in PACKAGES:
        if module == package or module.startswith(package + "."):
            return package
    return None


def package_imports() -> dict[str, dict[str, list[str]]]:
    """package → {imported package → ["file: module", ...]} over every .py of the package."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            for module in imported_modules(path, package):
                target = owner(module)
                if target is not None and target != package:
                    graph[package].setdefault(target, []).append(
                        f"{path.relative_to(REPO)}: {module}")
    return graph


def test_the_walker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from multishot.generate.generator import Generator\n"
                      "    from . import sibling\n")
    assert {"multishot.generate.generator", "multishot.model.sibling"} <= \
        imported_modules(source, "multishot.model")


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_never_import_the_applications(library):
    graph = package_imports()
    upward = {app: graph[library][app] for app in APPLICATIONS if app in graph[library]}
    assert not upward, f"{library} imports the top floor: {upward}"


def test_no_import_cycle_between_packages():
    graph = {p: set(targets) for p, targets in package_imports().items()}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, f"import cycles between packages: {sorted(set(map(tuple, cycles)))}"
