"""The import statements of flowd/, even under TYPE_CHECKING or inside a function, form no
cycle, and keep the layout's rules (written in flowd/__init__.py):

- ``_redis`` and ``_codec`` import nothing of flowd but ``errors`` and each other's
  modules;
- ``_consumer`` never imports ``cli``, ``dashboard`` or ``contrib``;
- ``flow`` imports nothing of flowd but ``_redis``, ``_codec``, ``errors`` and itself;
- no module of flowd imports ``flowd`` itself (its ``__init__``, the curated face).
"""

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
    assert "flowd._redis.session" in graph["flowd.queue"]  # from ._redis.session import ...
    assert "flowd._consumer.engine" in graph["flowd.handle"]
    assert "flowd.cli.runner" in graph["flowd.contrib.flask"]  # from ..cli import runner
    assert "flowd._lifecycle" in graph["flowd._consumer.engine"]  # from .. import _lifecycle
    assert "flowd.cli.demo" in graph["flowd.cli.commands"]  # inside a function
    assert "flowd.cli.parser" in graph["flowd.cli"]  # a package's __init__
    assert sum(len(targets) for targets in graph.values()) > 100


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_flowd_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


#: What the boundary packages may import of flowd, besides their own modules.
BOUNDARY = ("flowd._redis", "flowd._codec")
BOUNDARY_MAY_IMPORT = ("flowd.errors",)
CONSUMER_MAY_NOT_IMPORT = ("flowd.cli", "flowd.dashboard", "flowd.contrib")
#: Flow control sits below the runtime: it may import the boundary and errors only.
FLOW = "flowd.flow"


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Each import that breaks a layout rule, as 'importer -> imported: rule'."""
    breaks = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "flowd" and importer != "flowd":
                breaks.append(f"{importer} -> flowd: nothing imports the curated face")
            elif any(inside(importer, b) for b in BOUNDARY) and not (
                any(inside(target, b) for b in BOUNDARY) or target in BOUNDARY_MAY_IMPORT
            ):
                breaks.append(
                    f"{importer} -> {target}: _redis and _codec import only errors and each other"
                )
            elif inside(importer, FLOW) and not (
                inside(target, FLOW)
                or any(inside(target, b) for b in BOUNDARY)
                or target in BOUNDARY_MAY_IMPORT
            ):
                breaks.append(
                    f"{importer} -> {target}: flow imports only _redis, _codec, errors and itself"
                )
            elif inside(importer, "flowd._consumer") and any(
                inside(target, p) for p in CONSUMER_MAY_NOT_IMPORT
            ):
                breaks.append(
                    f"{importer} -> {target}: _consumer never imports cli, dashboard or contrib"
                )
    return breaks


def test_rule_breaks_names_each_forbidden_import() -> None:
    # Given a graph with one import against each rule, and allowed ones
    graph = {
        "flowd": {"flowd.queue"},
        "flowd.queue": {"flowd._consumer.engine", "flowd._redis.session"},
        "flowd._redis.session": {"flowd.errors", "flowd._redis.replies", "flowd.queue"},
        "flowd._codec.plan": {"flowd._codec.codecs", "flowd._redis.timeutil"},
        "flowd._consumer.engine": {"flowd._redis.session", "flowd.cli.runner"},
        "flowd.cli.parser": {"flowd", "flowd.dashboard.cli"},
        "flowd.flow.pause": {"flowd._redis.keys", "flowd.errors", "flowd._consumer.reader"},
    }
    # Then exactly the four forbidden ones are named
    assert rule_breaks(graph) == [
        "flowd._consumer.engine -> flowd.cli.runner: _consumer never imports cli, dashboard "
        "or contrib",
        "flowd._redis.session -> flowd.queue: _redis and _codec import only errors and each other",
        "flowd.cli.parser -> flowd: nothing imports the curated face",
        "flowd.flow.pause -> flowd._consumer.reader: flow imports only _redis, _codec, errors "
        "and itself",
    ]


def test_flowd_keeps_its_layout_rules() -> None:
    breaks = rule_breaks(import_graph())
    assert not breaks, "imports against the layout rules:\n" + "\n".join(breaks)


def test_no_module_is_over_450_lines_and_no_folder_holds_20() -> None:
    # Small modules with one job each; folders small enough to read at a glance.
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in ROOT.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert not too_long, too_long
    folders = {path.parent for path in ROOT.rglob("*.py")}
    crowded = {
        str(folder.relative_to(ROOT.parent)): n
        for folder in folders
        if (n := len(list(folder.glob("*.py")))) >= 20
    }
    assert not crowded, crowded
