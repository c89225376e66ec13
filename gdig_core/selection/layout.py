"""Where selections live and what their files are called: the one place that knows the layout.

A run's selections sit under ``<run_dir>/selection`` (:data:`ROOT`), one directory per method
and budget, ``<method>/b<budget>``; a method that ignores the budget (``full``) has one,
``<method>/all``. Each directory holds :data:`OUTPUT_FILES`; ``summary.json`` is written last,
so a directory holding one is a complete selection. :mod:`gdig_core.report.explain`, the stage tasks and
the report find selections through the functions here.
"""

from __future__ import annotations

from pathlib import Path

#: The selection root inside a run directory.
ROOT = "selection"
SELECTED_JSONL = "selected.jsonl"
SELECTED_PARQUET = "selected.parquet"
CANDIDATES = "candidates.parquet"
SUMMARY = "summary.json"
SCORE_HIST = "score_hist.png"
CLUSTERS = "clusters.png"
#: Every file :func:`gdig_core.selection.select` may write into its output directory.
OUTPUT_FILES = (SELECTED_JSONL, SELECTED_PARQUET, CANDIDATES, SUMMARY, SCORE_HIST, CLUSTERS)
#: Status of a candidate in ``candidates.parquet`` (the codes index this tuple).
STATUSES = ("selected", "top_up", "bad", "below_quality", "not_reached")
SELECTED, TOP_UP, BAD, BELOW_QUALITY, NOT_REACHED = range(len(STATUSES))
ALL_BUDGETS = "all"


def budget_dir_name(budget: int | None, uses_budget: bool = True) -> str:
    """``b<budget>``, or ``all`` for a method that ignores the budget."""
    return f"b{int(budget)}" if uses_budget and budget is not None else ALL_BUDGETS


def parse_budget_dir(name: str) -> int | None:
    """The budget of a directory named by :func:`budget_dir_name` (None for ``all``)."""
    return int(name[1:]) if name.startswith("b") and name[1:].isdigit() else None


def selection_subdir(name: str, budget: int, kind: str | None = None) -> str:
    """``<name>/b<budget>``, or ``<name>/all`` when the method's kind (default: ``name``) ignores
    the budget."""
    from gdig_core.selection.registry import uses_budget

    return f"{name}/{budget_dir_name(budget, uses_budget(kind or name))}"


def selection_dir(root: str | Path, name: str, budget: int, kind: str | None = None) -> Path:
    """Conventional output directory: ``<root>/<name>/b<budget>``; a method of kind ``full``
    (default: named ``full``) has one, ``<root>/<name>/all``."""
    return Path(root) / selection_subdir(name, budget, kind)


def selection_dirs(root: Path, method: str | None = None, budget: int | None = None) -> list[tuple[str, int | None, Path]]:
    """(method name, budget, directory) of every selection under ``root`` holding a
    ``candidates.parquet``, optionally one method's or one budget's."""
    found = []
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for m in names:  # selection directories are named after their methods (MethodSpec.name)
        if method is not None and m != method:
            continue
        for d in sorted((root / m).glob("*")):
            if not (d / CANDIDATES).exists():
                continue
            b = parse_budget_dir(d.name)
            if budget is not None and b is not None and b != budget:
                continue
            found.append((m, b, d))
    return found
