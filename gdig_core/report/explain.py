"""Why was a candidate selected or not: its benefit statistics, the seeds it helps and harms
most, its cluster, and the decision of every selection found in a run directory.

Files read, each path relative to ``run_dir`` unless absolute (all are parameters of
:func:`explain_candidate`; these are the defaults):

- ``scores/*.parquet``: the score shards (:mod:`gdig_core.influence.scores`). Only the ``id`` column of
  each shard is scanned; the one shard holding the candidate is read in full.
- ``data/pool.parquet``: the pool pairs (``id, src_lang, tgt_lang, src, tgt``), for its text.
- ``data/seed.parquet``: the seed pairs, for the text of the seeds it helps and harms.
- ``selection/<method>/b<budget>/`` (``selection/full/all/`` for the full pool), as written by
  :func:`gdig_core.selection.select`: ``candidates.parquet`` (status, ranks, cluster and the
  method's reason for every candidate) and ``summary.json`` (budget, cluster sizes). Reasons are
  read as the method wrote them, never rebuilt here.

When ``<run_dir>/outputs.json`` exists (the pipeline writes it) and a path is not given, its
``scores`` entry (the shard directory) and ``data`` entry (holding ``pool.parquet`` and
``seed.parquet``) are used instead of the defaults above, so ``gdig explain RUN_DIR ID`` finds
the content-addressed stage directories by itself.

Only the latest run's selections are explained: those its ``outputs.json`` lists (``selected``).
Others under ``selection/`` (an earlier config's methods or budgets) are listed as stale.

Missing pool or seed files only drop the texts; a missing selection directory only drops the
decisions. A candidate id absent from every score shard is an :class:`ExplainError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gdig_core.influence.scores import read_scores
from gdig_core.integrity import CorruptFileError, reading
from gdig_core.selection import method_names, selection_dirs
from gdig_core.selection.layout import CANDIDATES, ROOT, SUMMARY

DEFAULT_SCORES = "scores/*.parquet"
DEFAULT_POOL = "data/pool.parquet"
DEFAULT_SEED = "data/seed.parquet"
DEFAULT_SELECTION = ROOT


class ExplainError(LookupError):
    """The candidate or a required file was not found."""


@dataclass
class SeedEffect:
    seed_id: str
    benefit: float
    src: str | None = None
    tgt: str | None = None


@dataclass
class Decision:
    """One selection's verdict on the candidate."""

    method: str
    budget: int
    directory: str
    status: str  # selected | top_up | bad | below_quality | not_reached | absent
    selected: bool
    rank: int | None
    cluster: int | None
    cluster_rank: int | None
    cluster_size: int | None
    reason: str


@dataclass
class Explanation:
    id: str
    pair: dict[str, Any] | None
    ok: bool
    bad_reason: str | None
    loss: float | None
    n_tokens: int
    n_seeds: int
    benefit_mean: float | None
    benefit_frac_pos: float | None
    benefit_min: float | None
    benefit_max: float | None
    #: Share of eligible candidates whose mean benefit is at most this one's (None: unknown).
    percentile: float | None
    helped: list[SeedEffect] = field(default_factory=list)
    harmed: list[SeedEffect] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: Selections under the selection root that the latest run did not write (``method/b<budget>``):
    #: an earlier config's, not explained.
    stale_selections: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve(run_dir: Path, path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run_dir / p


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _find_shard(paths: list[Path], candidate_id: str) -> Path:
    for p in paths:
        with reading(p, "score shard"):
            ids = pq.read_table(p, columns=["id"]).column("id")
        if pc.any(pc.equal(ids, candidate_id)).as_py():
            return p
    raise ExplainError(f"candidate {candidate_id!r} is in none of the {len(paths)} score shards")


def _pairs_by_id(path: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not path.exists() or not ids:
        return {}
    if not path.is_file():
        raise ExplainError(f"{path}: not a Parquet file of pairs (a directory or a device)")
    with reading(path, "pairs Parquet file"):
        table = pq.read_table(path)
    hit = table.filter(pc.is_in(table.column("id").cast(pa.string()), value_set=pa.array(ids, pa.string())))
    return {str(r["id"]): r for r in hit.to_pylist()}


def _seed_effects(scores: Any, row: int, top_n: int) -> tuple[list[SeedEffect], list[SeedEffect]]:
    """Most helped / harmed seeds: from the full benefit vector when stored, else the top-k lists.
    Helped means a positive benefit and harmed a negative one: a candidate that harms two seeds
    lists two, not the two plus the seeds it helps least."""
    if scores.benefit is not None and scores.ok[row]:
        vec = scores.benefit[row].astype(np.float64)
        sid = scores.seed_ids
        helped = [SeedEffect(sid[j], float(vec[j])) for j in np.argsort(-vec, kind="stable")]
        harmed = [SeedEffect(sid[j], float(vec[j])) for j in np.argsort(vec, kind="stable")]
    else:
        helped = [SeedEffect(s, float(v))
                  for s, v in zip(scores.top_helped[row], scores.top_helped_values[row], strict=True)]
        harmed = [SeedEffect(s, float(v))
                  for s, v in zip(scores.top_harmed[row], scores.top_harmed_values[row], strict=True)]
    return [e for e in helped if e.benefit > 0][:top_n], [e for e in harmed if e.benefit < 0][:top_n]


def _selection_dirs(root: Path, method: str | None, budget: int | None) -> list[tuple[str, int | None, Path]]:
    order = {m: i for i, m in enumerate(method_names())}
    found = selection_dirs(root, method, budget)
    return sorted(found, key=lambda x: (order.get(x[0], len(order)), x[0], x[1] or 0))


def _label(method: str, d: Path) -> str:
    return f"{method} {d.name}"


def current_selections(
    run_dir: Path, root: Path, method: str | None, budget: int | None
) -> tuple[list[tuple[str, int | None, Path]], list[tuple[str, int | None, Path]]]:
    """(the latest run's selections, earlier runs' selections) under ``root``, optionally one
    method's or budget's. The latest run's are those its ``outputs.json`` lists; without one (a
    selection root written by :func:`gdig_core.selection.run_selection`) every selection is current."""
    found = _selection_dirs(root, method, budget)
    index = run_dir / "outputs.json"
    if root.resolve() != (run_dir / ROOT).resolve() or not index.is_file():
        return found, []
    try:
        outputs = json.loads(index.read_text(encoding="utf-8"))
        listed = set(outputs["selected"]) if isinstance(outputs, dict) and "selected" in outputs else None
    except (OSError, ValueError, TypeError) as err:
        raise ExplainError(f"{index}: unreadable outputs index ({err}); run the pipeline again to rewrite it") from None
    if listed is None:
        return found, []
    current = [x for x in found if f"{x[0]}/{x[2].name}" in listed]
    return current, [x for x in found if f"{x[0]}/{x[2].name}" not in listed]


def _no_such_selection(root: Path, method: str | None, budget: int | None,
                       stale: list[tuple[str, int | None, Path]], run_dir: Path) -> ExplainError:
    """--method/--budget that match none of the latest run's selections: say what there is."""
    wanted = " ".join(filter(None, [f"of method {method!r}" if method else None,
                                    f"at budget {budget}" if budget is not None else None]))
    current, _ = current_selections(run_dir, root, None, None)
    have = ", ".join(_label(m, d) for m, _, d in current) or "none"
    message = f"no selection {wanted} in {root} from the latest run; it has: {have}"
    if stale:
        message += "; from an earlier run (stale, not explained): " + ", ".join(_label(m, d) for m, _, d in stale)
    return ExplainError(message)


def _decision(method: str, budget: int | None, d: Path, cid: str) -> Decision:
    with reading(d / SUMMARY, "selection summary"):
        summary = json.loads((d / SUMMARY).read_text(encoding="utf-8"))
    budget = summary.get("budget", budget)
    with reading(d / CANDIDATES, "selection candidates file"):
        rows = pq.read_table(d / CANDIDATES, filters=[("id", "=", cid)]).to_pylist()
    if not rows:
        return Decision(
            method,
            budget,
            str(d),
            "absent",
            False,
            None,
            None,
            None,
            None,
            "not among the candidates scored for this selection",
        )
    c = rows[0]
    c["status"] = str(c["status"])
    sizes = (summary.get("clustering") or {}).get("cluster_sizes") or []
    csize = sizes[c["cluster"]] if c["cluster"] is not None and c["cluster"] < len(sizes) else None
    selected = c["status"] in ("selected", "top_up")
    # The method wrote every candidate's reason; a selection from before it did has none.
    reason = c.get("reason") or f"{c['status']} (no reason recorded in {CANDIDATES})"
    return Decision(
        method,
        budget,
        str(d),
        c["status"],
        selected,
        c["rank"],
        c["cluster"],
        c["cluster_rank"],
        csize,
        reason,
    )


def _percentile(dirs: list[tuple[str, int | None, Path]], value: float | None) -> float | None:
    if value is None or not dirs:
        return None
    t = pq.read_table(dirs[0][2] / CANDIDATES, columns=["status", "score"])
    keep = pc.not_equal(t.column("status").cast(pa.string()), "bad")
    vals = t.column("score").filter(keep).to_numpy(zero_copy_only=False)
    return float((vals <= value).mean()) if len(vals) else None


def run_paths(
    run_dir: str | Path,
    scores: str | Path | None = None,
    pool: str | Path | None = None,
    seed: str | Path | None = None,
    selection: str | Path | None = None,
) -> dict[str, Path]:
    """The input paths of an explanation: given ones, else ``outputs.json``'s, else the defaults."""
    run = Path(run_dir)
    outputs: dict[str, Any] = {}
    if (run / "outputs.json").is_file():
        with reading(run / "outputs.json", "outputs index"):
            outputs = json.loads((run / "outputs.json").read_text(encoding="utf-8"))
        if not isinstance(outputs, dict):
            raise CorruptFileError(run / "outputs.json", "not a JSON object: run the pipeline again to rewrite it")
    data_dir = outputs.get("data")
    found = {
        "scores": str(Path(outputs["scores"]) / "*.parquet") if outputs.get("scores") else DEFAULT_SCORES,
        "pool": str(Path(data_dir) / "pool.parquet") if data_dir else DEFAULT_POOL,
        "seed": str(Path(data_dir) / "seed.parquet") if data_dir else DEFAULT_SEED,
        "selection": DEFAULT_SELECTION,
    }
    given = {"scores": scores, "pool": pool, "seed": seed, "selection": selection}
    return {k: _resolve(run, given[k] if given[k] is not None else v) for k, v in found.items()}


def explain_candidate(
    run_dir: str | Path,
    candidate_id: str,
    *,
    scores: str | Path | None = None,
    pool: str | Path | None = None,
    seed: str | Path | None = None,
    selection: str | Path | None = None,
    method: str | None = None,
    budget: int | None = None,
    top_n: int = 5,
) -> Explanation:
    """Explain one candidate from the files of a run directory (see the module docstring).

    ``scores`` is a glob (or a single file); ``method`` / ``budget`` restrict the decisions shown.
    Paths left None come from :func:`run_paths`.
    """
    paths = run_paths(run_dir, scores, pool, seed, selection)
    cid = str(candidate_id)
    base = paths["scores"]
    shard_paths = sorted(base.parent.glob(base.name)) if any(ch in base.name for ch in "*?[") else [base]
    shard_paths = [p for p in shard_paths if p.is_file()]
    if not shard_paths:
        raise ExplainError(f"no score shards at {base}")
    table = read_scores([_find_shard(shard_paths, cid)])
    row = int(np.flatnonzero(table.ids == cid)[0])
    ok = bool(table.ok[row])
    helped, harmed = _seed_effects(table, row, top_n)
    seed_text = _pairs_by_id(paths["seed"], sorted({e.seed_id for e in helped + harmed}))
    for e in helped + harmed:
        if e.seed_id in seed_text:
            e.src, e.tgt = seed_text[e.seed_id]["src"], seed_text[e.seed_id]["tgt"]
    bad_reason = None if ok else str(table.bad_reason[row] or "unknown")
    dirs, stale = current_selections(Path(run_dir), paths["selection"], method, budget)
    if not dirs and (method is not None or budget is not None):
        raise _no_such_selection(paths["selection"], method, budget, stale, Path(run_dir))
    mean = _finite(table.benefit_mean[row])
    return Explanation(
        id=cid,
        pair=_pairs_by_id(paths["pool"], [cid]).get(cid),
        ok=ok,
        bad_reason=bad_reason,
        loss=_finite(table.loss[row]),
        n_tokens=int(table.n_tokens[row]),
        n_seeds=len(table.seed_ids),
        benefit_mean=mean,
        benefit_frac_pos=_finite(table.benefit_frac_pos[row]),
        benefit_min=_finite(table.benefit_min[row]),
        benefit_max=_finite(table.benefit_max[row]),
        percentile=_percentile(dirs, mean) if ok else None,
        helped=helped,
        harmed=harmed,
        decisions=[_decision(m, b, d, cid) for m, b, d in dirs],
        stale_selections=[f"{m}/{d.name}" for m, _, d in stale],
    )


def _clip(text: str | None, n: int = 90) -> str:
    if text is None:
        return "(text not available)"
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def format_explanation(e: Explanation) -> str:
    """A plain-text report of an :class:`Explanation` for the terminal."""
    lines = [f"candidate {e.id}"]
    if e.pair:
        lines += [
            f"  {e.pair.get('src_lang')}: {_clip(e.pair.get('src'), 120)}",
            f"  {e.pair.get('tgt_lang')}: {_clip(e.pair.get('tgt'), 120)}",
        ]
    else:
        lines.append("  (pair text not found in the pool file)")
    if not e.ok:
        lines.append(f"scoring: BAD ({e.bad_reason}); excluded from every selection")
    else:
        loss = f"{e.loss:.4g}" if e.loss is not None else "n/a"
        lines.append(f"scoring: ok, loss {loss} over {e.n_tokens} target tokens")
        pct = f" (percentile {100 * e.percentile:.1f} among eligible)" if e.percentile is not None else ""
        n_pos = round((e.benefit_frac_pos or 0.0) * e.n_seeds)
        lines.append(
            f"benefit over {e.n_seeds} seeds: mean {e.benefit_mean:.4g}{pct}; helps {n_pos}/{e.n_seeds} "
            f"({e.benefit_frac_pos:.0%}); min {e.benefit_min:.4g}, max {e.benefit_max:.4g}"
        )
        for title, effects, none in (("seeds it helps most", e.helped, "(none: it helps no seed)"),
                                     ("seeds it harms most", e.harmed, "(none: it harms no seed)")):
            lines.append(f"{title}:")
            if not effects:
                lines.append(f"  {none}")
            for s in effects:
                lines.append(f"  {s.benefit:+.4g}  {s.seed_id}: {_clip(s.src, 60)} -> {_clip(s.tgt, 60)}")
    lines.append("decisions:" if e.decisions else "decisions: no selection outputs found")
    for d in e.decisions:
        head = f"{d.method} b{d.budget}" if d.method != "full" else "full pool"
        verdict = f"SELECTED (rank {d.rank})" if d.selected else f"not selected ({d.status})"
        if d.cluster is not None:
            verdict += f", cluster {d.cluster} of size {d.cluster_size}"
        lines.append(f"  {head}: {verdict}")
        lines.append(f"      {d.reason}")
    if e.stale_selections:
        lines.append("stale selections (an earlier run's config; not explained): " + ", ".join(e.stale_selections))
    return "\n".join(lines)
