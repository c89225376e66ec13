"""Tables and plots from stored results: the comparison of selection methods per budget.

Input is plain data (what the evaluation and selection stages wrote), so the report can be
rebuilt from a run directory without re-running anything. Output: ``report.md`` (the comparison
table and per-selection details), ``report.png`` (BLEU and chrF per test set, method and budget),
``comparison.csv`` and ``comparison.json``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gdig_core.io import atomic_path, atomic_write_json, atomic_write_text

METRICS = ("bleu", "chrf", "comet")
#: Row order in tables: the paper's method first, then the baselines.
METHOD_ORDER = ("zero-shot", "gdig", "quality", "diversity", "random", "full")


def metric_table(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    """``{test_set: {metric: value}}`` from an evaluation result, whatever its nesting.

    Any mapping holding at least one of BLEU/chrF/COMET (any case) is a test-set entry named by
    its key path (``flores``, ``test_sets/wmt22``...).
    """
    out: dict[str, dict[str, float]] = {}
    found = {k.lower(): v for k, v in metrics.items() if k.lower() in METRICS and isinstance(v, int | float)}
    if found:
        out[prefix or "test"] = {k: float(v) for k, v in found.items()}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            name = key if not prefix else f"{prefix}/{key}"
            out.update(metric_table(value, name))
    # "test_sets/flores" reads better as "flores" when the wrapper key is the same for all.
    heads = {k.split("/", 1)[0] for k in out if "/" in k}
    if len(heads) == 1 and all("/" in k for k in out):
        out = {k.split("/", 1)[1]: v for k, v in out.items()}
    return out


def _order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def comparison_rows(evaluations: Sequence[Mapping[str, Any]], selections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, budget): metrics per test set averaged over finetune seeds, the
    selection size and, when the pool carries clean/noisy labels, the clean share."""
    sel = {(s["method"], int(s["budget"])): s for s in selections}
    grouped: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for ev in evaluations:
        grouped[(ev["method"], int(ev.get("budget") or 0))].append(ev)
    rows: list[dict[str, Any]] = []
    for (method, budget), evs in sorted(grouped.items(), key=lambda kv: (kv[0][1], _order(kv[0][0]))):
        s = sel.get((method, budget), {})
        row: dict[str, Any] = {"method": method, "budget": budget, "size": s.get("size", evs[0].get("size")),
                               "seeds": len(evs)}
        if s.get("clean_share") is not None:
            row["clean_share"] = s["clean_share"]
        tables = [metric_table(ev.get("metrics", {})) for ev in evs]
        for test in sorted({t for tab in tables for t in tab}):
            for metric in METRICS:
                vals = [tab.get(test, {}).get(metric) for tab in tables]
                if any(v is not None for v in vals):
                    row[f"{test}/{metric}"] = _mean(vals)
        rows.append(row)
    # Selections that were not evaluated (finetune or evaluation off) still show their size.
    seen = {(r["method"], r["budget"]) for r in rows}
    for (method, budget), s in sorted(sel.items(), key=lambda kv: (kv[0][1], _order(kv[0][0]))):
        if (method, budget) not in seen:
            row = {"method": method, "budget": budget, "size": s.get("size"), "seeds": 0}
            if s.get("clean_share") is not None:
                row["clean_share"] = s["clean_share"]
            rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 and value != 0 else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "_no results_\n"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: str | Path) -> bool:
    """Grouped bars: BLEU and chrF per test set for every (budget, method). False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_cols = [c for c in dict.fromkeys(c for r in rows for c in r) if c.endswith(("/bleu", "/chrf"))]
    if not metric_cols:
        return False
    fig, axes = plt.subplots(1, len(metric_cols), figsize=(4.2 * len(metric_cols), 3.6), squeeze=False)
    labels = [f"{r['method']}\nB={r['budget']}" if r["budget"] and r["method"] != "full" else str(r["method"]) for r in rows]
    for ax, col in zip(axes[0], metric_cols, strict=True):
        values = [r.get(col) or 0.0 for r in rows]
        colors = ["#c0392b" if r["method"] == "gdig" else "#7f8c8d" for r in rows]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
        ax.set_title(col.replace("/", " "), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def build_report(
    evaluations: Sequence[Mapping[str, Any]],
    selections: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    title: str = "G-DIG selection report",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``report.md``, ``report.png``, ``comparison.csv`` and ``comparison.json``; return
    ``{"rows": ..., "markdown": ...}``."""
    out = Path(out_dir)
    rows = comparison_rows(evaluations, selections)
    has_plot = plot_comparison(rows, out / "report.png")
    parts = [f"# {title}\n", "Metrics are averaged over finetune seeds; `seeds` counts them. "
             "`zero-shot` is the base model without finetuning.\n", "## Comparison\n", markdown_table(rows)]
    if has_plot:
        parts.append("\n![comparison](report.png)\n")
    details = [{"method": s["method"], "budget": s["budget"], "size": s.get("size"), "shortfall": s.get("shortfall")}
               for s in sorted(selections, key=lambda s: (int(s["budget"]), _order(s["method"])))]
    parts += ["\n## Selections\n", markdown_table(details)]
    if notes:
        parts += ["\n## Notes\n", *(f"- {n}\n" for n in notes)]
    text = "".join(parts)
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "comparison.json", rows)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    return {"rows": rows, "markdown": text}
