"""The package's import graph has no cycle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import sessionstore

_ROOT = Path(sessionstore.__file__).parent
_PACKAGE = "sessionstore"


def _module_name(path: Path) -> str:
    parts = [_PACKAGE, *path.relative_to(_ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(_ROOT.rglob("*.py"))}


def _targets(
    node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known: set[str]
) -> list[str]:
    """The package modules an import statement (anywhere in a module) loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            found.append(sub)  # ``from pkg import submodule``
        elif base in known:
            found.append(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports: top level, in functions, type-only alike."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(node, name, path.name == "__init__.py", known))
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_sees_a_lazy_import() -> None:
    """The checker itself: a cycle closed only by an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from .b import x\n"
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _targets(node, "sessionstore.a", False, {"sessionstore.b"}) == ["sessionstore.b"]


def test_the_package_has_no_import_cycle() -> None:
    """No module imports itself back through others, lazily or for type checking included."""
    graph = import_graph()
    assert graph.get("sessionstore._store")
    assert find_cycle(graph) is None


def test_the_core_never_imports_the_process_layer_or_the_tools() -> None:
    """The store and the modules under it never reach up into process/, cli/ or stress/."""
    graph = import_graph()
    upper = (
        "sessionstore.process",
        "sessionstore.cli",
        "sessionstore.stress",
        "sessionstore.integrations",
    )
    core = [
        m
        for m in graph
        if m.count(".") == 1 and m.split(".")[1].startswith("_") and m != "sessionstore.__main__"
    ]
    reaching = {m: sorted(t for t in graph[m] if t.startswith(upper)) for m in core}
    assert {m: t for m, t in reaching.items() if t} == {}
