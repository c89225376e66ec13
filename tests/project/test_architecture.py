"""The house's shape: gdig_core is grouped in wings by pipeline stage, each wing says its job in
its ``__init__``, imports between wings run one way, no module outgrows 500 lines, and the
tests mirror the tree. docs/architecture.md draws the same picture."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "gdig_core"
#: Wings from the bottom up: a module may import its own wing and the wings of lower layers.
#: Siblings on one layer (evaluation, influence, filters) import none of each other.
LAYERS: dict[str, int] = {
    "write_faults": -1,  # below io: io names the output a full disk refused with it
    "io": 0, "integrity": 0, "names": 0,  # shared modules at the root
    "config": 1,
    "data": 2,
    "training": 3,
    "evaluation": 4, "influence": 4, "filters": 4,
    "selection": 5,
    "report": 6,
    "preflight": 7,  # the up-front checks of a whole run: may look at every wing
}
#: Upward imports that are not edges of the code's flow: the config's validators look up the
#: influence wing's registries by name, inside a function, when a config is checked (so that a
#: strategy a project registers is a valid setting).
ALLOWED_UPWARD = {
    ("gdig_core.config.influence", "gdig_core.influence.preconditioners"),
    ("gdig_core.config.influence", "gdig_core.influence.variants"),
    ("gdig_core.config.selection", "gdig_core.influence.variants"),
}
TEST_DIRS = {"config", "data", "training", "evaluation", "influence", "filters", "selection", "report",
             "tasks", "flows", "project"}
MAX_LINES = 500
MAX_ROOT_MODULES = 8


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _all_imports(path: Path) -> set[str]:
    """Every gdig_core module ``path`` imports or looks up by name, at any depth."""
    text = path.read_text(encoding="utf-8")
    out: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gdig_core"):
            out |= {f"gdig_core.{a.name}" for a in node.names} if node.module == "gdig_core" else {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gdig_core")}
    out |= set(re.findall(r'import_module\("(gdig_core[\w.]*)"\)', text))
    return out


def upward_imports() -> list[tuple[str, str]]:
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        module = _module(path)
        wing = _wing(module)
        for target in _all_imports(path):
            target_wing = _wing(target)
            if wing is None or target_wing is None or target_wing == wing:
                continue
            if LAYERS[target_wing] > LAYERS[wing] or (
                    LAYERS[target_wing] == LAYERS[wing] and target_wing != wing):
                bad.append((module, target))
    return sorted(set(bad) - ALLOWED_UPWARD)


def test_every_module_belongs_to_a_known_wing() -> None:
    unknown = {_wing(_module(p)) for p in CORE.rglob("*.py")} - set(LAYERS) - {None}
    assert not unknown, f"add these wings to LAYERS (and docs/architecture.md): {sorted(unknown)}"


def test_imports_between_wings_run_one_way() -> None:
    assert not upward_imports(), "imports against the wings' order (LAYERS): " + ", ".join(
        f"{a} -> {b}" for a, b in upward_imports())


def test_the_one_way_check_sees_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "gdig_core" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from gdig_core.selection.run import select\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "CORE", tmp_path / "gdig_core")
    assert upward_imports() == [("gdig_core.data.bad", "gdig_core.selection.run")]


def test_the_root_holds_few_modules_and_every_wing_says_its_job() -> None:
    root_modules = sorted(p.name for p in CORE.glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
    for package in sorted(p for p in CORE.iterdir() if p.is_dir() and not p.name.startswith("__")):
        init = package / "__init__.py"
        assert init.exists(), f"{package.name}/ is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) <= 15, f"gdig_core/{package.name}/__init__.py: a docstring of a few lines"
        assert "import" in doc, f"gdig_core/{package.name}/__init__.py: say what the wing may import"


def test_no_core_file_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in CORE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_tests_mirror_the_tree() -> None:
    tests = ROOT / "tests"
    assert not list(tests.glob("test_*.py")), "tests live in tests/<wing>/"
    dirs = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert dirs <= TEST_DIRS, sorted(dirs - TEST_DIRS)
    wings = {p.name for p in CORE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert wings <= dirs, f"wings without tests: {sorted(wings - dirs)}"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "test file names must stay unique (pytest's rootdir imports)"


def test_architecture_doc_names_every_wing() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package in CORE.iterdir():
        if package.is_dir() and not package.name.startswith("__"):
            assert f"gdig_core/{package.name}/" in doc, package.name
