"""Compare the selections of two runs byte for byte: ``selected.jsonl`` of every method and budget.

For a change that must not change behaviour (a refactor, a dependency bump): run the same config
before and after into two run directories, then

    python scripts/compare_selections.py RUN_DIR_BEFORE RUN_DIR_AFTER

Exit code 0 when both runs hold the same selection directories and every ``selected.jsonl`` is
identical; 1 otherwise, naming each difference.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

SELECTION_ROOT = "selection"
SELECTED = "selected.jsonl"


def selections(run_dir: Path) -> dict[str, str]:
    """``<method>/<budget>`` -> SHA-256 of its ``selected.jsonl``."""
    root = run_dir / SELECTION_ROOT
    if not root.is_dir():
        raise SystemExit(f"{root}: no selections (is {run_dir} a finished run directory?)")
    return {str(p.parent.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(SELECTED))}


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    out = [f"{name}: only in the first run" for name in sorted(before.keys() - after.keys())]
    out += [f"{name}: only in the second run" for name in sorted(after.keys() - before.keys())]
    out += [f"{name}: selected.jsonl differs" for name in sorted(before.keys() & after.keys())
            if before[name] != after[name]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = selections(args.before), selections(args.after)
    diff = differences(before, after)
    for line in diff:
        print(line)
    if not before:
        print("no selected.jsonl in either run")
        return 1
    if not diff:
        print(f"{len(before)} selections identical: " + ", ".join(sorted(before)))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
