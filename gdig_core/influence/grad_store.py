"""The projected gradient store: score a new seed set without a pass over the pool.

Per candidate the store keeps its projected loss gradient ``dW'_z = P_out^T dW_z P_in`` for every
tracked layer (``gdig_core.influence.features.GradientProjection``: a Kronecker-structured random
projection, or the layer itself when it fits), flattened into one row, beside what a score shard
records whatever the seeds (ok, reason, loss, token count, gradient norm, feature). With
curvature fitted on projected gradients (LoGra's approach; ``gdig_core.influence.curvature`` does it in the
exact factors' own passes) and the seeds preconditioned in the same space
(``seed_preconditioning.precondition_seeds(..., projection=...)``), the benefit of candidate z on seed s is

    b'_s(z) = < H'^-1 dW'_s , dW'_z >   summed over layers  =  (G V'^T)[z, s]

for the store's rows ``G`` [N, D] and the stacked preconditioned seeds ``V'`` [S, D]: one matrix
product. When the projection is the identity (small layers) this equals the exact benefit up to
float rounding. Cosine variants divide by the projected gradients' norms.

One segment is one Parquet file (one row group per scoring batch, so it streams like the score
shards): ``id``, ``ok``, ``bad_reason``, ``loss``, ``n_tokens``, ``grad_norm`` (exact, over the
tracked layers), ``feature`` and ``grad`` (fixed-size list of float32, or float16 divided by
``grad_scale``, the row's largest magnitude, so nothing overflows); the projection, feature size
and dtype are in its schema metadata.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from gdig_core.config import ScoringConfig
from gdig_core.influence.benefit import (
    CandidateFacts,
    CandidateRecorder,
    SeedBlocks,
    candidate_facts,
    score_batch,
    seed_blocks,
)
from gdig_core.influence.curvature import autocast_dtype
from gdig_core.influence.features import GradientProjection, gradient_projection
from gdig_core.influence.hooks import BatchContext, Batches, capture_batches, layer_shape
from gdig_core.influence.scores import ROW_FIELDS, ScoreShardWriter
from gdig_core.influence.seed_preconditioning import Preconditioned, masked_inputs
from gdig_core.influence.variants import Variant
from gdig_core.io import atomic_path

FORMAT_VERSION = "1"
META_VERSION = b"gdig.grad_store"
META_PROJECTION = b"gdig.projection"
META_FEATURE_DIM = b"gdig.feature_dim"
META_DTYPE = b"gdig.dtype"
_ARROW = {"float32": pa.float32(), "float16": pa.float16()}


def segment_schema(projection: GradientProjection, feature_dim: int, dtype: str) -> pa.Schema:
    meta = {
        META_VERSION: FORMAT_VERSION.encode(),
        META_PROJECTION: json.dumps(projection.describe(), sort_keys=True).encode(),
        META_FEATURE_DIM: str(int(feature_dim)).encode(),
        META_DTYPE: dtype.encode(),
    }
    return pa.schema([
        *ROW_FIELDS,
        pa.field("grad_norm", pa.float64()),
        pa.field("feature", pa.list_(pa.float32(), int(feature_dim))),
        pa.field("grad", pa.list_(_ARROW[dtype], projection.total_dim)),
        pa.field("grad_scale", pa.float32()),
    ], metadata=meta)


def _fixed(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    n, width = mat.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(mat).reshape(-1), type=typ), width)


class GradientSegmentWriter:
    """Streams batches of candidates' projected gradients into one segment, renamed into place on
    a clean exit (an exception leaves no file). Implements ``influence.GradientSink``."""

    def __init__(self, path: str | Path, projection: GradientProjection, feature_dim: int, dtype: str = "float32") -> None:
        if dtype not in _ARROW:
            raise ValueError(f"gradient store dtype {dtype!r}: expected one of {sorted(_ARROW)}")
        self.path, self.projection, self.dtype = Path(path), projection, dtype
        self.schema = segment_schema(projection, feature_dim, dtype)
        self.n_rows = 0
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> GradientSegmentWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        # Random projections neither compress nor repeat: no codec and no dictionary, so a row
        # costs its raw bytes and writing and reading stay cheap.
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="none", use_dictionary=False)
        return self

    def write(self, facts: CandidateFacts, grads: Tensor) -> None:
        if self._writer is None:
            raise RuntimeError("GradientSegmentWriter.write outside its `with` block")
        n = len(facts.ids)
        if n == 0:
            return
        g = grads.detach().float().cpu().numpy()
        g[~facts.ok] = 0.0  # bad rows may hold NaN: their values are never read
        if self.dtype == "float16":
            scale = np.abs(g).max(axis=1)
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            stored = (g / scale[:, None]).astype(np.float16)
        else:
            scale, stored = np.ones(n, dtype=np.float32), g
        cols = {
            "id": pa.array([str(i) for i in facts.ids], pa.string()),
            "ok": pa.array(facts.ok.astype(bool)),
            "bad_reason": pa.array([None if ok else (r or "unknown") for ok, r in zip(facts.ok, facts.reasons, strict=True)],
                                   pa.string()),
            "loss": pa.array(np.where(np.isfinite(facts.loss), facts.loss, np.nan), pa.float64(),
                             from_pandas=True),
            "n_tokens": pa.array(facts.n_tokens.astype(np.int32)),
            "grad_norm": pa.array(np.where(facts.ok, facts.grad_norm, np.nan), pa.float64(), from_pandas=True),
            "feature": _fixed(np.where(facts.ok[:, None], facts.features, 0).astype(np.float32), pa.float32()),
            "grad": _fixed(stored, _ARROW[self.dtype]),
            "grad_scale": pa.array(scale, pa.float32()),
        }
        self._writer.write_table(pa.table(cols, schema=self.schema))
        self.n_rows += n

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return bool(self._stack.__exit__(exc_type, exc, tb))


def segment_writer(
    path: str | Path, shapes: dict[str, tuple[int, int]], cfg_score: ScoringConfig
) -> GradientSegmentWriter:
    """The writer of one segment for layers of ``shapes`` (tracked order) under the store settings."""
    return GradientSegmentWriter(path, gradient_projection(shapes, cfg_score.store), cfg_score.feature_dim,
                                 cfg_score.store.dtype)


class GradientSegment:
    """One segment read back: row data as numpy, ``grads`` [n, D] float32."""

    def __init__(self, table: pa.Table) -> None:
        meta = table.schema.metadata or {}
        if meta.get(META_VERSION) != FORMAT_VERSION.encode():
            raise ValueError(f"not a gradient store segment of format {FORMAT_VERSION}")
        self.projection: dict[str, Any] = json.loads(meta[META_PROJECTION])
        self.feature_dim = int(meta[META_FEATURE_DIM])
        self.ids = [str(i) for i in table.column("id").to_pylist()]
        self.ok = table.column("ok").to_numpy(zero_copy_only=False).astype(bool)
        self.reasons = table.column("bad_reason").to_pylist()
        self.loss = table.column("loss").to_numpy(zero_copy_only=False).astype(np.float64)
        self.n_tokens = table.column("n_tokens").to_numpy(zero_copy_only=False).astype(np.int32)
        self.grad_norm = table.column("grad_norm").to_numpy(zero_copy_only=False).astype(np.float64)
        n = len(self.ids)
        self.features = _matrix(table.column("feature"), n, self.feature_dim).astype(np.float32)
        width = sum(k_out * k_in for k_out, k_in in (layer["shape"] for layer in self.projection["layers"]))
        grads = _matrix(table.column("grad"), n, width).astype(np.float32)
        scale = table.column("grad_scale").to_numpy(zero_copy_only=False).astype(np.float32)
        self.grads = grads if meta.get(META_DTYPE) == b"float32" else grads * scale[:, None]

    def facts(self, rows: np.ndarray, finite: np.ndarray) -> CandidateFacts:
        """The candidate facts of ``rows``; ``finite`` marks rows whose scores are finite."""
        ok = self.ok[rows] & finite
        reasons = [r if r is not None else (None if k else "nonfinite_gradient")
                   for r, k in zip((self.reasons[i] for i in rows), ok, strict=True)]
        return CandidateFacts(ids=[self.ids[i] for i in rows], ok=ok, reasons=reasons, loss=self.loss[rows],
                              n_tokens=self.n_tokens[rows], grad_norm=self.grad_norm[rows], features=self.features[rows])


def _matrix(col: pa.ChunkedArray, n: int, width: int) -> np.ndarray:
    flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(n, width)


def read_segment(source: str | Path | pa.Buffer) -> GradientSegment:
    """A segment from a path or from its bytes; a file that does not parse names itself."""
    from gdig_core.integrity import reading

    name = source if isinstance(source, str | Path) else "gradient store segment (in memory)"
    with reading(name, "gradient store segment"):
        table = pq.read_table(source if isinstance(source, str | Path) else pa.BufferReader(source))
        return GradientSegment(table)


def capture_gradients(
    model: nn.Module,
    batches: Batches,
    tracked: dict[str, nn.Module],
    cfg_score: ScoringConfig,
    out_path: str | Path,
) -> dict[str, Any]:
    """One forward and backward pass per candidate of ``batches``, storing its projected gradient
    and row data (no seeds needed): how the store path fills the store for candidates it lacks.
    The rows are what ``influence.score_shard(..., grad_sink=...)`` stores in its pass."""
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg_score.autocast)
    dtype = amp or torch.float32
    shapes = {n: layer_shape(m) for n, m in tracked.items()}
    start = time.perf_counter()
    reasons: Counter[str] = Counter()
    n = n_ok = 0
    with segment_writer(out_path, shapes, cfg_score) as writer:
        recorder = CandidateRecorder(shapes, cfg_score.feature_dim, cfg_score.feature_seed, [writer.projection])

        def on_layer(ctx: BatchContext, name: str, a: Tensor, g: Tensor) -> None:
            recorder.add(name, *masked_inputs(ctx, a, g, dtype))

        for ctx in capture_batches(
            model, tracked, batches, on_layer, normalisation=cfg_score.loss_normalisation, autocast_dtype=amp
        ):
            sq, feats, (grads,) = recorder.finish(len(ctx.ids), device)
            facts = candidate_facts(ctx, torch.isfinite(grads).all(1), sq, feats)
            writer.write(facts, grads)
            n += len(ctx.ids)
            n_ok += int(facts.ok.sum())
            reasons.update(r for r in facts.reasons if r is not None)
    return {"n": n, "n_ok": n_ok, "n_bad": n - n_ok, "reasons": dict(reasons),
            "seconds": time.perf_counter() - start}


@dataclass
class StoreSeeds:
    """Projected preconditioned seeds ready for :func:`rescore_segment`: stacked once (every
    preconditioner the variants read), as one [S, D] matrix per store layout."""

    blocks: SeedBlocks
    _matrices: dict[str, Tensor] = field(default_factory=dict)

    def matrix(self, projection: dict[str, Any]) -> Tensor:
        """The seeds as [S, D] fp32, layers in the order of ``projection`` (a segment's)."""
        stacked = self.blocks.stacked
        if stacked.projection != projection:
            raise ValueError("the seeds were preconditioned in another projected space than the store's "
                             f"(seeds: {stacked.projection or 'exact'}; store: {projection})")
        key = json.dumps(projection, sort_keys=True)
        if key not in self._matrices:
            self._matrices[key] = torch.cat([stacked.dense(layer["name"]).float().reshape(len(stacked.seed_ids), -1)
                                             for layer in projection["layers"]], dim=1)
        return self._matrices[key]


def store_seeds(
    precond: Preconditioned | dict[str, Preconditioned], loss_normalisation: str, variants: list[Variant] | None = None
) -> StoreSeeds:
    """Check and stack projected preconditioned seeds (``seed_preconditioning.precondition_seeds`` with the
    store's projection) for the score ``variants``."""
    return StoreSeeds(seed_blocks(precond, loss_normalisation, variants))


def rescore_segment(
    segment: GradientSegment, rows: np.ndarray, seeds: StoreSeeds, cfg_score: ScoringConfig, out_path: str | Path
) -> dict[str, Any]:
    """Score the candidates at ``rows`` of a store segment against projected preconditioned seeds:
    one product ``G V'^T``; write a score shard (the format of ``influence.score_shard``'s)."""
    start = time.perf_counter()
    grads = torch.from_numpy(segment.grads[rows])
    raw = grads @ seeds.matrix(segment.projection).T
    proj_norm = grads.double().pow(2).sum(1).sqrt().numpy()  # cosine in the projected space
    facts = segment.facts(rows, torch.isfinite(raw).all(1).numpy())
    names = [v.name for v in seeds.blocks.variants]
    per_variant = seeds.blocks.benefits(raw, facts.n_tokens, proj_norm)
    with ScoreShardWriter(out_path, seeds.blocks.seed_ids, segment.feature_dim, cfg_score.full_benefit_max_seeds,
                          cfg_score.top_k_seeds, variants=names) as writer:
        writer.write(score_batch(facts, per_variant, names[0]))
    n_ok = int(facts.ok.sum())
    return {"n": len(rows), "n_ok": n_ok, "n_bad": len(rows) - n_ok,
            "reasons": dict(Counter(r for r in facts.reasons if r is not None)),
            "seconds": time.perf_counter() - start}
