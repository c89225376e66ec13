"""scripts/compare_selections.py: equal runs pass, a changed, missing or extra selection fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "compare_selections.py"


def _run_dir(root: Path, selections: dict[str, str]) -> Path:
    for name, text in selections.items():
        path = root / "selection" / name / "selected.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    return root


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_identical_selections_pass_and_every_difference_is_named(tmp_path: Path) -> None:
    same = {"gdig/b50": '{"id": "a"}\n', "random/b50": '{"id": "b"}\n'}
    before = _run_dir(tmp_path / "before", same)
    assert _compare(before, _run_dir(tmp_path / "after", same)).returncode == 0
    changed = _run_dir(tmp_path / "changed", {"gdig/b50": '{"id": "c"}\n', "cheap/b50": "{}\n"})
    out = _compare(before, changed)
    assert out.returncode == 1
    assert "gdig/b50: selected.jsonl differs" in out.stdout
    assert "random/b50: only in the first run" in out.stdout
    assert "cheap/b50: only in the second run" in out.stdout
