"""No module of flowd imports, even under TYPE_CHECKING or inside a function, a module that
imports it back: the import statements of flowd/ form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import flowd

ROOT = Path(flowd.__file__).parent


def module_name(path: Path) -> str:
    parts = ["flowd", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom, modules: set[str]) -> set[str]:
    """The flowd modules a ``from ... import ...`` statement depends on."""
    if node.level:
        base = importer.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # "from . import _lifecycle" depends on the module flowd._lifecycle, "from .job import
    # Job" and "from . import Queue" on the module that defines the name
    return {
        f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
        for alias in node.names
    }


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = list(resolve(name, is_package, node, set(files)))
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of modules on it), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    # Given the walker, When it reads flowd, Then it finds relative, absolute, in-function
    # and package imports alike (a walker that saw none would pass vacuously)
    graph = import_graph()
    assert "flowd._redis" in graph["flowd.queue"]  # from ._redis import ...
    assert "flowd._engine" in graph["flowd.handle"]
    assert "flowd" in graph["flowd.cli"]  # from . import __version__ as ...
    assert "flowd._runner" in graph["flowd.contrib.flask"]  # from .. import _runner
    assert "flowd._lifecycle" in graph["flowd._engine"]  # from . import _lifecycle
    assert sum(len(targets) for targets in graph.values()) > 100


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_flowd_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())
