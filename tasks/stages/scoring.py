"""The scoring stage: every pool candidate's benefit on every seed, computed only for the
candidates the result store lacks (``tasks.sharding.result_store``), then written in pool order under the
pool's ids (``gdig_core.influence.row_store.assemble``).

Two paths (``scoring.path``):

- ``exact``: new candidates get a forward and backward pass (shards of ``scores`` jobs) against
  the preconditioned seeds. With the gradient store enabled the same pass also stores their
  projected gradients; candidates scored before the store was enabled get a ``gradients`` job.
- ``store``: candidates the gradient store lacks get a ``gradients`` job (a pass without seeds);
  then every new candidate is scored by one matrix product against the projected seeds, in this
  process: no pass over the pool.

Rows are keyed by content and a context (``row_contexts``): a pool that grew, shrank or was
reordered computes its new rows only, and every other row is copied as it was stored. The
stage's record and the progress artifact say how many rows were computed (``rows_scored``) and
how many reused (``rows_reused``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdig_core.config import GdigConfig
from tasks.caching.stage_cache import StageOutput, code_version, run_stage, stage_key
from tasks.caching.stage_keys import key_parts, stage_calls
from tasks.runtime import artifacts
from tasks.sharding import storage
from tasks.sharding.jobs import ShardJob, ShardKind, plan, stage_inputs
from tasks.sharding.mapping import map_shards
from tasks.sharding.result_store import StoreIndex, index_store, publish_segment, read_verified, store_root
from tasks.stages.common import pool_hash
from tasks.stages.files import needed_methods, precond_file, scoring_factor_file


def _context(name: str, inputs: dict[str, str], cfg: GdigConfig) -> str:
    config_json, files = key_parts(stage_calls(name, cfg))
    return stage_key(name, inputs, config_json, code_version(files))


def row_contexts(
    cfg: GdigConfig, reference: tuple[str, str], factors: StageOutput, precond: StageOutput
) -> dict[str, str | None]:
    """Keys of what one stored row depends on besides its text: ``gradients`` (the model, the
    projection and the capture settings; None when the store is off) and ``scores`` (also the
    factors, the preconditioned seeds and the path's scoring settings, never the pool)."""
    grads = _context("gradients", {"reference": reference[1]}, cfg) if cfg.scoring.store.enabled else None
    inputs = {"reference": reference[1], "factors": factors.digest(scoring_factor_file(cfg, cfg.curvature.method)),
              "precond": precond.digest(*(precond_file(m) for m in needed_methods(cfg)))}
    if cfg.scoring.path == "store":
        assert grads is not None
        inputs["gradients"] = grads
    return {"scores": _context("scoring-rows", inputs, cfg), "gradients": grads}


class _Planner:
    """Shard jobs over groups of new rows (content keys, pool order); each job's outputs are
    store segments named by the keys they hold."""

    def __init__(self, cfg: GdigConfig, work: Path, pool: Any, keys: list[str], files: dict[str, tuple[Path, str]]):
        self.cfg, self.work, self.pool, self.keys = cfg, work, pool, keys
        self.inputs = stage_inputs(cfg, files)
        self.jobs: list[ShardJob] = []

    def add(self, kind: ShardKind, name: str, wanted: list[str], output_root: str, grad_root: str | None) -> None:
        from gdig_core.data.pairs import write_pairs
        from gdig_core.influence.row_store import segment_name, unique_rows
        from gdig_core.integrity import file_digest

        if not wanted:
            return
        rows = unique_rows(self.pool, self.keys, set(wanted))
        todo = self.work / f"todo-{name}.parquet"
        write_pairs(rows, todo)
        inputs = {**self.inputs, **stage_inputs(self.cfg, {"table": (todo, file_digest(todo))})}
        ids = rows.column("id").to_pylist()
        config = self.cfg.model_dump(mode="json")
        for start, end in plan(len(ids), self.cfg.scoring.shard_size):
            seg = segment_name(ids[start:end])
            self.jobs.append(ShardJob(
                kind=kind, stage_key=self.work.name, index=len(self.jobs), start=start, end=end, config=config,
                inputs=inputs, output=storage.join(output_root, seg),
                grad_output=storage.join(grad_root, seg) if grad_root else None))


def _read_table(location: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(storage.read_bytes(location)))


def _rescore(cfg: GdigConfig, keys: list[str], grads: StoreIndex, scores_root: str, precond: StageOutput,
             work: Path, note: str) -> list[str]:
    """Score ``keys`` from the gradient store against the projected seeds; returns the keys whose
    store segment did not verify (to be recomputed)."""
    import numpy as np
    import pyarrow as pa

    from gdig_core.influence.grad_store import read_segment, store_seeds
    from gdig_core.influence.row_store import segment_name
    from gdig_core.influence.seed_preconditioning import Preconditioned
    from gdig_core.influence.variants import score_variants

    precond_by_method = {m: Preconditioned.load(precond.path(precond_file(m))) for m in needed_methods(cfg)}
    seeds = store_seeds(precond_by_method, cfg.scoring.loss_normalisation,
                        score_variants(cfg.curvature.method, cfg.scoring.variants))
    groups = grads.segments(keys)
    corrupt: list[str] = []
    what = f"scoring: {len(keys)} rows from the gradient store"
    progress = artifacts.progress(artifacts.artifact_key("scoring", "progress"), 0.0 if groups else 1.0,
                                  f"{what}; {note}")
    for done, (location, items) in enumerate(groups.items(), start=1):
        data = read_verified(grads, location)
        if data is None:
            corrupt += [key for key, _ in items]
            continue
        segment = read_segment(pa.py_buffer(data))
        for start in range(0, len(items), cfg.scoring.shard_size):
            chunk = items[start:start + cfg.scoring.shard_size]
            chunk_keys = [key for key, _ in chunk]
            out = storage.join(scores_root, segment_name(chunk_keys))
            local = storage.local_path(out) or work / "rescored" / segment_name(chunk_keys)
            summary = calls_rescore(cfg)(segment, np.array([row for _, row in chunk]), seeds, out_path=local)
            publish_segment(local, out, chunk_keys, summary)
        artifacts.update_progress(progress, done / len(groups), f"{what}, {done}/{len(groups)} store segments done; {note}")
    return corrupt


def calls_rescore(cfg: GdigConfig) -> Any:
    """The rescoring call as the stage's row context keys it."""
    return stage_calls("scoring-rows", cfg)["rescore"]


def _note(reused: int, new: int, extra: str = "") -> str:
    return f"rows_reused={reused} rows_scored={new}" + (f" ({extra})" if extra else "")


def scoring_stage(
    cfg: GdigConfig, run_dir: str, data: StageOutput, reference: tuple[str, str], factors: StageOutput,
    precond: StageOutput, model_label: str = "reference",
) -> StageOutput:
    """Benefit of every pool candidate on every seed, ``scores/shard-*.parquet`` in pool order,
    with summary columns for every configured score variant; new rows only are computed."""
    from gdig_core.data.pairs import read_pairs
    from gdig_core.influence.row_store import META_SCORE_PATH
    from gdig_core.influence.scores import read_scores

    orch = cfg.orchestration
    path = cfg.scoring.path
    methods = needed_methods(cfg)
    primary = scoring_factor_file(cfg, cfg.curvature.method)
    contexts = row_contexts(cfg, reference, factors, precond)
    label = f"scoring/{model_label}"
    calls = stage_calls("scoring", cfg)

    def compute(out: Path, work: Path) -> dict[str, Any]:
        pool = read_pairs(data.path("pool.parquet"))
        ids = [str(i) for i in pool.column("id").to_pylist()]
        keys = calls["content_keys"](pool)
        unique = list(dict.fromkeys(keys))
        scores_root = store_root(cfg, run_dir, "scores", contexts["scores"])
        scored = index_store(scores_root, verify_digests=True)
        need = [k for k in unique if k not in scored]
        reused = sum(1 for k in keys if k in scored)
        grads_root = store_root(cfg, run_dir, "gradients", contexts["gradients"]) if contexts["gradients"] else None
        grads = index_store(grads_root, verify_digests=False) if grads_root else None
        files = {"checkpoint": (Path(reference[0]), reference[1]), "factors": (factors.path(primary), factors.digest(primary)),
                 **{f"precond:{m}": (precond.path(precond_file(m)), precond.digest(precond_file(m))) for m in methods}}
        planner = _Planner(cfg, work, pool, keys, files)
        new_rows = len(keys) - reused
        stored = 0
        if path == "exact":
            lacking = set() if grads is None else {k for k in unique if k not in grads}
            planner.add("scores", "scores+gradients", [k for k in need if k in lacking], scores_root, grads_root)
            planner.add("scores", "scores", [k for k in need if k not in lacking], scores_root, None)
            planner.add("gradients", "gradients", [k for k in unique if k in scored and k in lacking], grads_root or "", None)
            stored = len(lacking)
            map_shards("scoring", planner.jobs, orch, _note(reused, new_rows, f"{stored} rows into the gradient store"
                                                          if stored else ""))
        else:
            assert grads is not None and grads_root is not None
            missing = [k for k in need if k not in grads]
            for attempt in range(2):  # a store segment found corrupt is recomputed once
                planner.jobs = []
                planner.add("gradients", f"gradients-{attempt}", missing, grads_root, None)
                note = _note(reused, new_rows, f"{len(missing)} rows need a pass for the gradient store")
                map_shards("scoring", planner.jobs, orch, note)
                stored += len(missing)
                grads = index_store(grads_root, verify_digests=False)
                done = index_store(scores_root, verify_digests=False)
                missing = _rescore(cfg, [k for k in need if k not in done], grads, scores_root, precond, work, note)
                if not missing:
                    break
            else:
                raise RuntimeError(f"{label}: gradient store segments under {grads_root} failed verification twice")
        scored = index_store(scores_root, verify_digests=True)
        meta: dict[str, Any] = {"path": path}  # what produced the scores; not how much was reused
        if path == "store":
            meta["store"] = cfg.scoring.store.model_dump(mode="json")
        calls["assemble"](ids, keys, scored.rows, _read_table, out / "scores", cfg.scoring.shard_size,
                 metadata={META_SCORE_PATH: json.dumps(meta, sort_keys=True).encode()})
        table = read_scores(sorted((out / "scores").glob("*.parquet")))
        return {"candidates": len(table), "ok": int(table.ok.sum()), "model": model_label, "path": path,
                "rows_scored": new_rows, "rows_reused": reused, "rows_stored": stored,
                "store": meta.get("store"), "variants": list(table.variants),
                "benefit_mean": float(table.benefit_mean[table.ok].mean()) if table.ok.any() else None}

    def record_rows(summary: dict[str, Any], cached: bool) -> dict[str, Any]:
        if cached:  # nothing computed in this run: every row is reused
            return {"rows_scored": 0, "rows_reused": summary.get("candidates"), "path": summary.get("path")}
        return {k: summary.get(k) for k in ("rows_scored", "rows_reused", "rows_stored", "path")}

    result = run_stage(
        run_dir, "scoring",
        {"pool": pool_hash(data), "reference": reference[1], "factors": factors.digest(primary),
         "precond": precond.digest(*(precond_file(m) for m in methods))},
        *key_parts(calls), compute, label=label, record_fields=record_rows,
    )
    rows = record_rows(result.summary, result.cached)
    if result.cached:
        artifacts.progress(artifacts.artifact_key("scoring", "progress"), 1.0,
                           f"scoring: cached; {_note(rows['rows_reused'] or 0, 0)}")
    artifacts.table(artifacts.artifact_key("scoring-summary", model_label), [result.summary | rows | {"cached": result.cached}],
                    f"Candidate scoring at the {model_label} model")
    return result
