"""The project's import graph has no cycle, and no gdig_core module grows past ~400 lines
without saying why at its top.

The graph is built from the syntax trees of ``gdig_core``, ``gdig_cli``, ``tasks`` and ``flows``
(nothing is imported). An edge ``a -> b`` is an import of project module ``b`` in ``a``'s module
body, including under ``if``/``try`` at module level; ``from pkg import name`` counts as an import
of ``pkg.name`` when that is a module, else of ``pkg``. Imports under ``if TYPE_CHECKING:`` and
imports inside functions are not edges: they run after every module involved has loaded (the
project defers heavy or optional imports that way), so they cannot make a partly initialised
module visible. Importing a package's submodule also runs the package's ``__init__``; that is an
edge ``module -> package`` when the package's ``__init__`` has imports of its own, except from the
package's own modules (Python loads a package before its modules; an ``__init__`` that gathers
its modules' names is the usual layout, not a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gdig_core", "gdig_cli", "tasks", "flows")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is loaded (not in functions, classes' methods or
    ``if TYPE_CHECKING``)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With | ast.ClassDef):
            todo += node.body
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                # The module itself, and every package __init__ on the way that has imports.
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix not in modules or prefix == name or name.startswith(prefix + "."):
                        continue  # a module's own packages are always loaded (or loading) first
                    if i < len(parts) and not _module_level_imports(ast.parse(modules[prefix].read_text())):
                        continue
                    graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_imports() -> None:
    graph = import_graph()
    assert "gdig_core.config" in graph["gdig_core.selection.quality"]
    assert "gdig_core.selection.methods" in graph["gdig_core.selection.run"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def test_core_modules_are_short_or_say_why() -> None:
    """A gdig_core module over MAX_LINES lines states why in its docstring, in a paragraph that
    starts with "Length:"."""
    long = []
    for path in sorted((ROOT / "gdig_core").rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and "Length:" not in _docstring(path):
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, "long modules without a 'Length:' paragraph in their docstring:\n" + "\n".join(long)
