"""Cache keys derived from the code, never kept by hand: which config fields a method function
reads, and which method modules it imports.

Config reads: the syntax trees of the project's modules are walked from a function whose
parameter receives a config object (``finetune(cfg, train_cfg, ...)``). An attribute chain on
that parameter (``train_cfg.learning_rate``, ``cfg.prompt.template``) is a read of that field; a
section passed on to another project function (``precondition_seeds(..., cfg.scoring)``) is
followed into that function; a local alias (``section = cfg.scoring``) is followed through its
uses. Whatever the walk cannot see through (a section passed to a library, iterated, dumped)
counts as reading all of it: the derived set can be too large (a needless recompute), not too
small (a stale hit).

Code: the import graph of ``gdig_core`` (module-level and function-level imports) gives the
modules a function's module reaches; their syntax trees, without docstrings, are fingerprinted.
The config package's field declarations are left out of its fingerprint: the values of the fields a
stage reads are in its key already, so adding a setting elsewhere does not recompute everything.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from gdig_core.io import text_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[2]
METHOD_PACKAGE = "gdig_core"
#: The config package: one schema over several modules, whose __init__ gathers their names.
CONFIG_DIR = PROJECT_ROOT / METHOD_PACKAGE / "config"
_PACKAGES = ("gdig_core", "tasks")
Path_ = tuple[str, ...]
WHOLE: Path_ = ()

# ast.parse is not thread-safe in CPython 3.11/3.12 (gh-106905: "AST constructor recursion depth
# mismatch", seen when selection tasks of a thread pool hashed code at once): one parse at a time.
_PARSE_LOCK = threading.Lock()
#: pydantic methods that read the whole object (less a literal ``exclude={...}``).
_DUMP_METHODS = {"model_dump", "model_dump_json", "model_copy"}
#: Builtins that look at an object without reading its fields.
_NO_READ_CALLS = {"isinstance", "type", "id", "callable"}


# ------------------------------------------------------------------------------ modules


@dataclass
class ModuleInfo:
    name: str
    path: Path
    tree: ast.Module
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    classes: dict[str, dict[str, ast.FunctionDef]] = field(default_factory=dict)
    #: local name -> (module, attribute or None): every import in the file, at any depth.
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def module_file(module: str) -> Path:
    path = PROJECT_ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _in_project(module: str) -> bool:
    return module.split(".")[0] in _PACKAGES and module_file(module).exists()


@cache
def module_info(module: str) -> ModuleInfo:
    path = module_file(module)
    with _PARSE_LOCK:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    info = ModuleInfo(module, path, tree)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            info.functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            info.classes[node.name] = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _in_project(sub):  # from gdig_core import data
                    info.imports[alias.asname or alias.name] = (sub, None)
                else:
                    info.imports[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                info.imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)
    return info


@cache
def config_modules() -> tuple[ModuleInfo, ...]:
    """Every module of the config package (its classes' methods read config fields)."""
    return tuple(module_info(f"{METHOD_PACKAGE}.config.{p.stem}") for p in sorted(CONFIG_DIR.glob("*.py"))
                 if p.stem != "__init__")


def defining_module(module: str, name: str) -> str | None:
    """The project module that defines function ``name`` as seen from ``module``: itself, or the
    module a package ``__init__`` re-exports it from (``from gdig_core.config import method_spec``)."""
    seen: set[str] = set()
    while module not in seen:
        seen.add(module)
        info = module_info(module)
        if name in info.functions:
            return module
        target = info.imports.get(name)
        if target is None or target[1] != name or not _in_project(target[0]):
            return None
        module = target[0]
    return None


@cache
def imported_modules(module: str) -> frozenset[str]:
    """``module`` and every project module it imports, transitively, within its own package."""
    package = module.split(".")[0]
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target, _ in module_info(name).imports.values():
            if target.split(".")[0] == package and _in_project(target):
                todo.append(target)
    return frozenset(seen)


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]


def _strip_field_declarations(tree: ast.Module) -> None:
    """Drop annotated class attributes (pydantic fields): their values enter keys as values."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            node.body = [n for n in node.body if not isinstance(n, ast.AnnAssign)] or [ast.Pass()]


def source_fingerprint(path: Path) -> str:
    """Hash of a module's syntax tree without docstrings (and, for the config package, without its field
    declarations): reformatting or editing comments and docs does not invalidate results."""
    text = path.read_text(encoding="utf-8")
    try:
        with _PARSE_LOCK:
            tree = ast.parse(text)
    except SyntaxError:
        return text_sha256(text)
    _strip_docstrings(tree)
    if path.parent == CONFIG_DIR:
        _strip_field_declarations(tree)
    return text_sha256(ast.dump(tree, annotate_fields=False))


def module_of(fn: Callable) -> str:
    fn = inspect.unwrap(getattr(fn, "fn", fn))  # a Prefect task: its function
    return fn.__module__


# ------------------------------------------------------------------------------ config reads


def _chain(node: ast.AST) -> tuple[str, Path_] | None:
    """``name.a.b`` -> ("name", ("a", "b")); None for anything else."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, tuple(reversed(attrs))
    return None


def _literal_strings(node: ast.AST | None) -> set[str] | None:
    if isinstance(node, ast.Set | ast.List | ast.Tuple) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return {e.value for e in node.elts}
    return None


class _Reads:
    """The walk of one function body for the fields read through one parameter."""

    def __init__(self, module: ModuleInfo, param: str) -> None:
        self.module = module
        self.param = param
        self.aliases: dict[str, list[Path_]] = {param: [WHOLE]}
        self.found: set[Path_] = set()
        #: Paths (under ``param``) that the function returns as config objects (``return cfg``,
        #: ``return cfg.model_copy(update=...)``): the caller tracks reads through them.
        self.returned: set[Path_] = set()

    def read(self, name: str, attrs: Path_) -> None:
        for base in self.aliases[name]:
            self.found.add(base + attrs)

    def resolve(self, func: ast.AST) -> tuple[str, str] | None:
        """(module, function) of a call target in the project, or None."""
        if isinstance(func, ast.Name):
            if func.id in self.module.functions:
                return self.module.name, func.id
            target = self.module.imports.get(func.id)
            if target and target[1] and _in_project(target[0]) and func.id not in self.aliases:
                found = defining_module(target[0], target[1])
                if found is not None:
                    return found, target[1]
        chain = _chain(func)
        if chain and len(chain[1]) == 1 and chain[0] not in self.aliases:
            target = self.module.imports.get(chain[0])
            if target and target[1] is None and _in_project(target[0]) \
                    and chain[1][0] in module_info(target[0]).functions:
                return target[0], chain[1][0]
        return None

    def config_chain(self, node: ast.AST) -> tuple[str, Path_] | None:
        chain = _chain(node)
        return chain if chain and chain[0] in self.aliases else None

    def method_call(self, name: str, attrs: Path_, call: ast.Call) -> None:
        """``cfg.x.method(...)``: a pydantic dump, a config-class method, or unknown (whole)."""
        method, prefix = attrs[-1], attrs[:-1]
        if method in _DUMP_METHODS:
            exclude = next((_literal_strings(k.value) for k in call.keywords if k.arg == "exclude"), None)
            if exclude is None:
                self.read(name, prefix)
            else:
                for base in self.aliases[name]:
                    self.found.add(base + prefix + ("__all_but__",) + tuple(sorted(exclude)))
            return
        if method == "section_json" and call.args and all(
                isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args):
            for arg in call.args:
                self.read(name, prefix + (arg.value,))
            return
        for config in config_modules():
            for methods in config.classes.values():
                node = methods.get(method)
                if node is not None and node.args.args and node.args.args[0].arg == "self":
                    for rel in _function_reads(config.name, node, "self"):
                        self.read(name, prefix + rel)
                    return
        self.read(name, prefix)

    def call(self, node: ast.Call, keep_returned: bool = False) -> list[Path_]:
        """Walk a call; return the config paths it returns when ``keep_returned`` (else those
        count as read: the result is used in a way this walk does not follow)."""
        if isinstance(node.func, ast.Name) and node.func.id in _NO_READ_CALLS and node.func.id not in self.aliases:
            for arg in node.args:
                if self.config_chain(arg) is None:
                    self.expr(arg)
            return []
        func_chain = self.config_chain(node.func)
        if func_chain and func_chain[1]:
            self.method_call(func_chain[0], func_chain[1], node)
        else:
            self.expr(node.func)
        target = self.resolve(node.func)
        returned: list[Path_] = []
        params: list[str] = []
        kwonly: set[str] = set()
        if target is not None:
            fdef = module_info(target[0]).functions[target[1]]
            params = [a.arg for a in fdef.args.posonlyargs + fdef.args.args]
            kwonly = {a.arg for a in fdef.args.kwonlyargs}
        for i, arg in enumerate(node.args):
            chain = self.config_chain(arg)
            if chain is None:
                self.expr(arg)
            elif target is not None and i < len(params) and not isinstance(arg, ast.Starred):
                returned += self.callee(target, params[i], *chain)
            else:
                self.read(*chain)
        for kw in node.keywords:
            chain = self.config_chain(kw.value)
            if chain is None:
                self.expr(kw.value)
            elif target is not None and kw.arg is not None and (kw.arg in params or kw.arg in kwonly):
                returned += self.callee(target, kw.arg, *chain)
            else:
                self.read(*chain)
        if not keep_returned:
            self.found.update(returned)
            return []
        return returned

    def callee(self, target: tuple[str, str], param: str, name: str, attrs: Path_) -> list[Path_]:
        """Count what the callee reads through ``param``; return the paths it hands back."""
        fdef = module_info(target[0]).functions[target[1]]
        reads, returned = _function_walk(target[0], fdef, param)
        for rel in reads:
            self.read(name, attrs + rel)
        return [base + attrs + rel for rel in returned for base in self.aliases[name]]

    def alias_paths(self, value: ast.AST) -> list[Path_] | None:
        """The config paths ``value`` evaluates to, when it is a config object: ``cfg.a``,
        ``cfg.a.model_copy(update=...)``, ``f(cfg)`` for a project ``f`` returning its argument,
        or an ``x if c else y`` of those. None for anything else. Walks what it evaluates."""
        if isinstance(value, ast.IfExp):
            body, orelse = self.alias_paths(value.body), None
            if body is not None:
                orelse = self.alias_paths(value.orelse)
            if body is None or orelse is None:
                return None
            self.expr(value.test)
            return body + orelse
        chain = self.config_chain(value)
        if chain is not None:
            return [base + chain[1] for base in self.aliases[chain[0]]]
        if not isinstance(value, ast.Call):
            return None
        func_chain = self.config_chain(value.func)
        if func_chain and func_chain[1] and func_chain[1][-1] == "model_copy":
            for kw in value.keywords:
                self.expr(kw.value)
            return [base + func_chain[1][:-1] for base in self.aliases[func_chain[0]]]
        returned = self.call(value, keep_returned=True)
        return returned if returned else None

    def assign(self, node: ast.Assign | ast.AnnAssign) -> bool:
        """``x = cfg.a`` (or another alias expression): an alias, not yet a read."""
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        if value is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
            return False
        if isinstance(value, ast.Call) and self.config_chain(value.func) is None and self.resolve(value.func) is None:
            return False  # not a config expression: walked as usual
        paths = self.alias_paths(value)
        if paths is None:
            return isinstance(value, ast.Call)  # a project call already walked (its result is not config)
        self.aliases[targets[0].id] = paths
        return True

    def expr(self, node: ast.AST | None) -> None:
        if node is None:
            return
        chain = self.config_chain(node)
        if chain is not None:
            self.read(*chain)
            return
        if isinstance(node, ast.Call):
            self.call(node)
            return
        if isinstance(node, ast.Assign | ast.AnnAssign) and self.assign(node):
            return
        if isinstance(node, ast.Return) and node.value is not None:
            paths = self.alias_paths(node.value)
            if paths is not None:
                self.returned.update(paths)
                return
        for child in ast.iter_child_nodes(node):
            self.expr(child)


_READS: dict[tuple[str, int, str], tuple[frozenset[Path_], frozenset[Path_]]] = {}
_IN_PROGRESS: set[tuple[str, int, str]] = set()
_READS_LOCK = threading.RLock()


def _function_walk(module: str, fdef: ast.FunctionDef, param: str) -> tuple[frozenset[Path_], frozenset[Path_]]:
    """(paths read, paths returned as config objects) through ``param`` of ``fdef``."""
    key = (module, fdef.lineno, param)
    with _READS_LOCK:
        if key in _READS:
            return _READS[key]
        if key in _IN_PROGRESS:  # recursion: count it all as read rather than guess
            return frozenset({WHOLE}), frozenset()
        _IN_PROGRESS.add(key)
        try:
            walk = _Reads(module_info(module), param)
            for stmt in fdef.body:
                walk.expr(stmt)
            _READS[key] = (_normalise(walk.found), frozenset(walk.returned))
        finally:
            _IN_PROGRESS.discard(key)
        return _READS[key]


def _function_reads(module: str, fdef: ast.FunctionDef, param: str) -> frozenset[Path_]:
    """Paths read through ``param``; config objects it returns count as read (no caller to follow)."""
    reads, returned = _function_walk(module, fdef, param)
    return _normalise(reads | returned)


def _normalise(paths: Iterable[Path_]) -> frozenset[Path_]:
    """Drop paths under another path of the set (reading ``a`` reads ``a.b``)."""
    ordered = sorted(set(paths), key=len)
    kept: list[Path_] = []
    for p in ordered:
        if not any(p[: len(k)] == k and "__all_but__" not in k for k in kept):
            kept.append(p)
    return frozenset(kept)


def config_reads(fn: Callable, param: str) -> frozenset[Path_]:
    """Field paths (relative to ``param``) that ``fn`` reads from the config object it gets there.
    ``()`` means all of it; a path ending in ``("__all_but__", *names)`` means all but those."""
    fn = inspect.unwrap(getattr(fn, "fn", fn))
    module = fn.__module__
    fdef = module_info(module).functions.get(fn.__name__)
    if fdef is None:
        raise ValueError(f"{module}.{fn.__qualname__}: not a module-level function of the project")
    if param not in [a.arg for a in fdef.args.posonlyargs + fdef.args.args + fdef.args.kwonlyargs]:
        raise ValueError(f"{module}.{fn.__name__} has no parameter {param!r}")
    return _function_reads(module, fdef, param)


def reset_caches() -> None:
    """Forget parsed modules and derived reads (tests that edit source files call this)."""
    module_info.cache_clear()
    imported_modules.cache_clear()
    with _READS_LOCK:
        _READS.clear()


def load_function(qualified: str) -> Callable:
    module, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
