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

METRICS = ("bleu", "chrf", "comet", "ref_nll")
#: Row order in tables: the paper's method first, then the baselines, filters and the oracle.
METHOD_ORDER = ("zero-shot", "gdig", "quality", "diversity", "random", "full", "nll", "length_ratio", "copy",
                "language_id", "cheap", "opusfilter", "qe", "oracle")
#: Method kinds by role, for the verdict.
INFLUENCE_KINDS = ("gdig", "quality")
FILTER_KINDS = ("nll", "length_ratio", "copy", "language_id", "cheap", "opusfilter", "qe")


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


def _order(row: Mapping[str, Any]) -> int:
    kind = row.get("kind") or row["method"]
    return METHOD_ORDER.index(kind) if kind in METHOD_ORDER else len(METHOD_ORDER)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = _finite(values)
    return sum(vals) / len(vals) if vals else None


def _sd(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation over finetuning seeds (None below two)."""
    vals = _finite(values)
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def comparison_rows(evaluations: Sequence[Mapping[str, Any]], selections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, budget): metrics per test set as the mean over finetuning seeds (and
    the sample standard deviation ``<test>/<metric>_sd`` with two or more), the selection size,
    and with noise labels the clean share and the ROC AUC of the method's score over all noise."""
    sel = {(s["method"], int(s["budget"])): s for s in selections}
    grouped: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for ev in evaluations:
        grouped[(ev["method"], int(ev.get("budget") or 0))].append(ev)
    rows: list[dict[str, Any]] = []
    for (method, budget), evs in grouped.items():
        rows.append(_row(method, budget, sel.get((method, budget), {}), evs))
    seen = {(r["method"], r["budget"]) for r in rows}
    for (method, budget), s in sel.items():  # selections not evaluated still show their size
        if (method, budget) not in seen:
            rows.append(_row(method, budget, s, []))
    return sorted(rows, key=lambda r: (r["budget"], _order(r), r["method"]))


def _row(method: str, budget: int, s: Mapping[str, Any], evs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = evs[0] if evs else {}
    row: dict[str, Any] = {"method": method, "kind": s.get("kind", first.get("kind", method)),
                           "model": s.get("model", first.get("model")), "budget": budget,
                           "size": s.get("size", first.get("size")), "seeds": len(evs)}
    noise = s.get("noise") or {}
    if noise.get("clean_share") is not None:
        row["clean_share"] = noise["clean_share"]
    elif s.get("clean_share") is not None:
        row["clean_share"] = s["clean_share"]
    if (noise.get("auc") or {}).get("all") is not None:
        row["score_auc"] = noise["auc"]["all"]
    tables = [metric_table(ev.get("metrics", {})) for ev in evs]
    for test in sorted({t for tab in tables for t in tab}):
        for metric in METRICS:
            vals = [tab.get(test, {}).get(metric) for tab in tables]
            if any(v is not None for v in vals):
                row[f"{test}/{metric}"] = _mean(vals)
                if len(_finite(vals)) >= 2:
                    row[f"{test}/{metric}_sd"] = _sd(vals)
    return row


def method_auc_rows(selections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method with a ranking score (one row per method; the score does not depend on the
    budget): ROC AUC at putting clean pairs above each noise kind, and the clean share per budget."""
    rows: dict[str, dict[str, Any]] = {}
    for s in sorted(selections, key=lambda s: (_order(s), s["method"], int(s["budget"]))):
        noise = s.get("noise") or {}
        if not noise.get("auc"):
            continue
        row = rows.setdefault(s["method"], {"method": s["method"], "kind": s.get("kind"), "model": s.get("model")})
        row.update(noise["auc"])
        if noise.get("clean_share") is not None:
            row[f"clean_share@{s['budget']}"] = noise["clean_share"]
    return list(rows.values())


def seed_rows(evaluations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluated model (method, budget, finetuning seed) with its own metrics."""
    rows = []
    for ev in evaluations:
        row = {"method": ev["method"], "budget": int(ev.get("budget") or 0), "seed": ev.get("seed")}
        for test, ms in metric_table(ev.get("metrics", {})).items():
            row.update({f"{test}/{m}": v for m, v in ms.items()})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["budget"], r["method"], r["seed"] if r["seed"] is not None else -1))


def verdict(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """Plain sentences: each influence method against random, the best cheap filter and the clean
    oracle at its budget, by the mean of ``metric`` (e.g. ``flores/bleu``) over seeds."""
    lines: list[str] = []
    lower_is_better = metric.endswith("ref_nll")
    for budget in sorted({r["budget"] for r in rows if r["budget"]}):
        at = [r for r in rows if r["budget"] == budget and r.get(metric) is not None]
        by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in at:
            by_kind[r["kind"]].append(r)
        filters = [r for k in FILTER_KINDS for r in by_kind.get(k, [])]
        best_filter = (min if lower_is_better else max)(filters, key=lambda r: r[metric]) if filters else None
        refs = [("random", by_kind["random"][0] if by_kind.get("random") else None),
                (f"the best cheap filter ({best_filter['method']})" if best_filter else "a cheap filter", best_filter),
                ("the clean oracle", by_kind["oracle"][0] if by_kind.get("oracle") else None)]
        for r in at:
            if r["kind"] not in INFLUENCE_KINDS:
                continue
            parts = []
            for name, ref in refs:
                if ref is None:
                    continue
                diff = r[metric] - ref[metric]
                better = diff < 0 if lower_is_better else diff > 0
                parts.append(f"{diff:+.2f} vs {name} ({'better' if better else 'worse' if diff else 'equal'})")
            if parts:
                lines.append(f"B={budget}, {r['method']} ({metric} {r[metric]:.2f}): " + "; ".join(parts))
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 and value != 0 else f"{value:.2f}"
    return str(value)


#: Columns that lead a table when present: what was selected, then how clean it is, then metrics.
LEADING = ("method", "kind", "model", "budget", "size", "seeds", "clean_share", "score_auc")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return [c for c in LEADING if c in cols] + [c for c in cols if c not in LEADING]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "_no results_\n"
    cols = _columns(rows)
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
    labels = [f"{r['method']}\nB={r['budget']}" if r["budget"] and r.get("kind") != "full" else str(r["method"]) for r in rows]
    for ax, col in zip(axes[0], metric_cols, strict=True):
        values = [r.get(col) or 0.0 for r in rows]
        errors = [r.get(col + "_sd") or 0.0 for r in rows]
        colors = ["#c0392b" if r.get("kind") in INFLUENCE_KINDS else "#2471a3" if r.get("kind") == "oracle"
                  else "#7f8c8d" for r in rows]
        ax.bar(range(len(rows)), values, color=colors, yerr=errors, capsize=2)
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
    score_aucs: Sequence[Mapping[str, Any]] = (),
    histogram: str | None = None,
    stage_times: Sequence[Mapping[str, Any]] = (),
    config_yaml: str | None = None,
    command: str | None = None,
    significance: Sequence[Mapping[str, Any]] = (),
    costs: Sequence[Mapping[str, Any]] = (),
    pool_profile: Mapping[str, Any] | None = None,
    cells: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Write ``report.md``, ``report.png``, ``comparison.csv`` and ``comparison.json``; return
    ``{"rows": ..., "markdown": ...}``.

    With noise labels the first table shows each method's clean share and the ROC AUC of its score,
    beside the downstream metrics (mean over finetuning seeds, ``_sd`` their sample standard
    deviation); ``score_aucs`` (gdig_core.report.evidence.auc_rows) adds the AUC of every score per noise
    kind, ``histogram`` names a PNG of score distributions in ``out_dir``, ``stage_times`` lists
    ``{stage, seconds, cached}``, and ``config_yaml``/``command`` say exactly what ran.
    ``significance`` (gdig_core.report.comparisons.significance_rows) adds the paired tests,
    ``costs`` (comparisons.method_costs) what each method cost, ``pool_profile`` the pool's
    lengths beside each selection's; a cascade run with its ablation gets an ablation table.
    ``cells`` lists the downstream cells with the flow run that computed each.
    """
    from gdig_core.report import comparisons as ev

    out = Path(out_dir)
    rows = comparison_rows(evaluations, selections)
    has_plot = plot_comparison(rows, out / "report.png")
    tests = list(dict.fromkeys(c.split("/")[0] for r in rows for c in r if c.endswith("/bleu")))
    parts = [f"# {title}\n",
             "Metrics are means over finetuning seeds (`seeds` counts them; `_sd` is their sample standard "
             "deviation). `zero-shot` is the base model without finetuning. `clean_share`: share of the "
             "selection without injected noise; `score_auc`: ROC AUC of the method's own ranking score at "
             "putting clean pairs above noisy ones. `ref_nll`: mean NLL per reference token (lower is better).\n",
             "## Comparison\n", markdown_table(rows)]
    for test in tests:
        lines = verdict(rows, f"{test}/bleu")
        if lines:
            parts += [f"\n### Verdict on {test} BLEU\n", *(f"- {line}\n" for line in lines)]
    if significance:
        parts += ["\n## Significance (paired bootstrap, sacrebleu)\n",
                  "Each influence method against random, the best field filter (the best of opusfilter, qe and "
                  "cheap on that test set) and the QE baseline: sacrebleu's two-sided paired bootstrap "
                  "(1,000 resamples) per finetuning seed and over the shared seeds (their hypotheses "
                  "concatenated). `delta` = system - baseline. The table gives the test over the seeds (or the "
                  "one seed both ran); `significance.csv` has every seed's.\n\n",
                  *(f"- {line}\n" for line in ev.significance_verdicts(significance)),
                  "\n", markdown_table(ev.headline_significance(significance))]
        _write_csv(out / "significance.csv", list(significance))
    ablation = ev.ablation_rows(rows)
    if ablation:
        parts += ["\n## Ablation of the cascade\n",
                  "Each part of the cascade (pre-filters, influence ranking, k-means) removed in turn at the "
                  "same budget, and the controls that replace the influence ranking by a random pick or by "
                  "the QE ranking after the same pre-filters (`vs full`: variant - full cascade).\n\n",
                  markdown_table(ablation)]
    if costs:
        parts += ["\n## Cost of each method\n",
                  "Compute each selection needs before finetuning (minutes, as the stages were computed on "
                  "this machine): influence methods pay curvature, seed preconditioning and scoring at their "
                  "model; QE methods the QE stage; rule filters only their own selection step.\n\n",
                  markdown_table(costs)]
    lengths = ev.length_rows(selections, pool_profile)
    if lengths:
        parts += ["\n## Length profile of each selection\n",
                  "Characters and whitespace words per side (mean, median) and the mean target/source "
                  "character ratio.\n\n", markdown_table(lengths)]
    if has_plot:
        parts.append("\n![comparison](report.png)\n")
    method_aucs = method_auc_rows(selections)
    if method_aucs:
        parts += ["\n## Each method's ranking score against each noise kind (ROC AUC)\n", markdown_table(method_aucs)]
    if score_aucs:
        parts += ["\n## Scores against labelled noise\n",
                  "ROC AUC of each per-candidate score (higher = ranks clean pairs above that noise kind; "
                  "0.5 is chance).\n\n", markdown_table(score_aucs)]
    if histogram:
        parts.append(f"\n![score distributions]({histogram})\n")
    per_seed = seed_rows(evaluations)
    if any(r["seed"] is not None for r in per_seed):
        parts += ["\n## Every finetuned model\n", markdown_table(per_seed)]
    details = [{"method": s["method"], "model": s.get("model"), "budget": s["budget"], "size": s.get("size"),
                "selected by kind": ", ".join(f"{k} {v}" for k, v in ((s.get("noise") or {}).get("selected_by_kind") or {}).items()),
                "shortfall": s.get("shortfall")}
               for s in sorted(selections, key=lambda s: (int(s["budget"]), _order(s), s["method"]))]
    parts += ["\n## Selections\n", markdown_table(details)]
    if cells:
        parts += ["\n## Downstream cells\n",
                  "Each cell is a finetune of the base model on one selection with one seed, then its evaluation "
                  "(zero-shot: the base model's evaluation alone), with the flow run that computed it (in this "
                  "run or an earlier one) and its seconds.\n\n", markdown_table(cells)]
    if stage_times:
        parts += ["\n## Time per stage\n", markdown_table(stage_times)]
    if notes:
        parts += ["\n## Notes\n", *(f"- {n}\n" for n in notes)]
    if command:
        parts += ["\n## Command\n", f"\n```\n{command}\n```\n"]
    if config_yaml:
        parts += ["\n## Configuration\n", f"\n```yaml\n{config_yaml}```\n"]
    text = "".join(parts)
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "comparison.json", rows)
    _write_csv(out / "comparison.csv", rows)
    return {"rows": rows, "markdown": text}


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
