"""The layout of ``tasks/`` holds: no import circle among the Prefect-side modules (module-level
and function-level imports alike), and its packages import one way only, stages -> sharding ->
caching -> runtime (``tasks/__init__.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

from paths import PROJECT_ROOT

PACKAGES = ("tasks", "flows", "gdig_cli")
#: Each ``tasks`` package may import the ones after it, never those before it.
ORDER = ("stages", "sharding", "caching", "runtime")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_tasks_flows_and_the_cli() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tasks_packages_import_one_way() -> None:
    wrong = []
    for name, deps in _graph().items():
        parts = name.split(".")
        if parts[0] != "tasks" or len(parts) < 3:
            continue
        for dep in deps:
            target = dep.split(".")
            if target[0] == "tasks" and len(target) > 1 and target[1] != parts[1] \
                    and ORDER.index(target[1]) < ORDER.index(parts[1]):
                wrong.append(f"{name} imports {dep}")
    assert not wrong, wrong
    assert {p.name for p in (PROJECT_ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ORDER)
    assert sorted(p.name for p in (PROJECT_ROOT / "tasks").glob("*.py")) == ["__init__.py"]
