"""The report's sections that answer "should I pay for influence scoring?": paired significance of
each influence method against random, the best field filter and the QE baseline; what each method
cost; a cascade's ablation; and the length profile of every selection (on a natural pool, where
quality differences are subtle, a method that only prefers short pairs shows there).

Input is plain data, as for gdig_core.report.writer: evaluation summaries with their hypotheses read by
the caller, selection summaries, stage times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gdig_core.evaluation.significance import MethodHyps, compare_methods, verdict_word

#: Method kinds whose score comes from influence (what is being judged).
INFLUENCE_KINDS = ("gdig", "quality")
#: The filters an MT engineer would run anyway: the best of them is the bar to clear.
FIELD_FILTER_KINDS = ("opusfilter", "qe", "cheap")


def _mean_metric(rows: Sequence[Mapping[str, Any]], method: str, column: str) -> float | None:
    for r in rows:
        if r["method"] == method and r.get(column) is not None:
            return float(r[column])
    return None


def key_comparisons(rows: Sequence[Mapping[str, Any]], test: str) -> list[tuple[str, str, str]]:
    """(system, baseline, role) pairs for one test set: every finetuned influence method against
    random, the field filter with the best mean BLEU on ``test``, and the QE baseline."""
    column = f"{test}/bleu"
    scored = [r for r in rows if r.get(column) is not None and r.get("budget")]
    pairs: list[tuple[str, str, str]] = []
    for budget in sorted({r["budget"] for r in scored}):
        at = [r for r in scored if r["budget"] == budget]
        randoms = [r["method"] for r in at if r["kind"] == "random" and r["method"] == "random"] or \
                  [r["method"] for r in at if r["kind"] == "random" and "." not in r["method"]]
        filters = [r for r in at if r["kind"] in FIELD_FILTER_KINDS and "." not in r["method"]]
        best = max(filters, key=lambda r: r[column])["method"] if filters else None
        qes = [r["method"] for r in filters if r["kind"] == "qe"]
        baselines = [(randoms[0], "random")] if randoms else []
        if best is not None:
            baselines.append((best, "best field filter"))
        if qes and qes[0] != best:
            baselines.append((qes[0], "QE baseline"))
        for r in at:
            if r["kind"] in INFLUENCE_KINDS:
                pairs += [(r["method"], b, role) for b, role in baselines]
    return pairs


def significance_rows(
    rows: Sequence[Mapping[str, Any]], hyps: Mapping[str, MethodHyps], references: Mapping[str, Sequence[str]],
    tgt_lang: str,
) -> list[dict[str, Any]]:
    """Paired bootstrap rows (gdig_core.evaluation.significance.compare_methods) for the key comparisons on
    every test set, each labelled with system, baseline and the baseline's role."""
    out: list[dict[str, Any]] = []
    for test, refs in references.items():
        for system, baseline, role in key_comparisons(rows, test):
            if system not in hyps or baseline not in hyps:
                continue
            for r in compare_methods(hyps[system], hyps[baseline], {test: refs}, tgt_lang):
                out.append({"system": system, "baseline": baseline, "role": role, **r})
    return out


def _headline(sig: Sequence[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    """(system, baseline, test, metric) -> the over-the-seeds row, or the one seed both ran."""
    keyed: dict[tuple, Mapping[str, Any]] = {}
    for r in sig:
        key = (r["system"], r["baseline"], r["test"], r["metric"])
        if r["seed"] == "all" or key not in keyed:
            keyed[key] = r
    return keyed


def headline_significance(sig: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows the report's table shows: one per comparison, test set and metric."""
    return [dict(r) for r in _headline(sig).values()]


def significance_verdicts(sig: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain sentences from the over-the-seeds rows (or the single seed where only one ran)."""
    lines = []
    keyed = _headline(sig)
    for (system, baseline, test, metric), r in keyed.items():
        if metric != "bleu":
            continue
        chrf = keyed.get((system, baseline, test, "chrf"))
        seeds = "over the seeds" if r["seed"] == "all" else f"seed {r['seed']}"
        text = (f"{test}: {system} vs {baseline} ({r['role']}): BLEU {r['delta']:+.2f} (p={r['p_value']:.3f}, "
                f"{verdict_word(r['delta'], r['p_value'])})")
        if chrf is not None:
            text += f", chrF {chrf['delta']:+.2f} (p={chrf['p_value']:.3f})"
        lines.append(f"{text}; {seeds}, {r['sentences']} sentence pairs")
    return lines


def target_check(sig: Sequence[Mapping[str, Any]], system: str, margin: float = 1.0, level: float = 0.05) -> dict[str, Any]:
    """Whether ``system`` is at least ``margin`` BLEU above the best field filter with p < ``level``
    on every test set (over the seeds where there are several)."""
    per_test: dict[str, bool] = {}
    for r in sig:
        if r["system"] != system or r["role"] != "best field filter" or r["metric"] != "bleu":
            continue
        if r["seed"] == "all" or r["test"] not in per_test:
            per_test[r["test"]] = bool(r["delta"] >= margin and r["p_value"] < level)
    return {"met": bool(per_test) and all(per_test.values()), "per_test": per_test}


def method_costs(
    selections: Sequence[Mapping[str, Any]], stage_times: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per selection: the compute it needs before finetuning, in seconds. Influence methods need
    curvature, preconditioning and scoring at their model; methods using QE need the QE stage;
    every method adds its own selection time. Stages are counted as they were computed (a stage
    reused from the cache counts its original time)."""
    seconds = {str(s["stage"]): float(s["seconds"]) for s in stage_times if s.get("seconds") is not None}
    out = []
    for s in selections:
        kind, model = s.get("kind"), s.get("model") or "reference"
        needs: list[str] = []
        if kind in ("gdig", "quality", "nll", "diversity"):  # diversity clusters gradient features
            needs += [f"curvature/{model}", f"precondition/{model}", f"scoring/{model}"]
        if kind == "qe" or "qe" in (s.get("prefilter") or []):
            needs.append("qe")
        own = f"selection/{s['method']}/b{s['budget']}"
        total = sum(seconds.get(n, 0.0) for n in needs) + seconds.get(own, 0.0)
        out.append({"method": s["method"], "kind": kind, "budget": s["budget"],
                    "needs": ", ".join(needs) or "-", "selection_seconds": seconds.get(own),
                    "total_minutes": total / 60.0})
    return out


def ablation_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each cascade with an ablation (methods named ``<cascade>.<change>``): the cascade and each
    variant with its clean share and mean BLEU/chrF/ref NLL, and the difference to the cascade."""
    names = {r["method"] for r in rows}
    cascades = sorted({m.split(".", 1)[0] for m in names if "." in m and m.split(".", 1)[0] in names})
    out = []
    metric_cols = [c for c in dict.fromkeys(c for r in rows for c in r)
                   if c.endswith(("/bleu", "/chrf", "/ref_nll")) and not c.endswith("_sd")]
    for cascade in cascades:
        for budget in sorted({r["budget"] for r in rows if r["method"] == cascade}):
            full = next(r for r in rows if r["method"] == cascade and r["budget"] == budget)
            members = [full] + sorted((r for r in rows if r["method"].startswith(cascade + ".") and r["budget"] == budget),
                                      key=lambda r: r["method"])
            for r in members:
                row = {"cascade": cascade, "variant": r["method"].split(".", 1)[1] if r is not full else "(full cascade)",
                       "budget": budget, "seeds": r.get("seeds"), "clean_share": r.get("clean_share")}
                for c in metric_cols:
                    if r.get(c) is not None:
                        row[c] = r[c]
                        if r is not full and full.get(c) is not None:
                            row[f"{c} vs full"] = r[c] - full[c]
                out.append(row)
    return out


def length_rows(selections: Sequence[Mapping[str, Any]], pool_profile: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each selection's length profile (and the pool's, first, when given)."""
    out = []
    if pool_profile:
        out.append({"method": "(pool)", "budget": None, **pool_profile})
    for s in sorted(selections, key=lambda s: (int(s["budget"]), s["method"])):
        if s.get("length_profile"):
            out.append({"method": s["method"], "budget": s["budget"], **s["length_profile"]})
    return out
