"""Results keyed by content: keys ignore ids and row order, stored rows come back in pool order
under the pool's ids with their values untouched, the store index trusts only verified segments,
and pinned stage outputs are refused when their hash or bytes differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gdig_core.config import GdigConfig, PinConfig, PinnedStage
from gdig_core.influence.row_store import assemble, content_keys, segment_name, unique_rows
from gdig_core.influence.scores import ScoreBatch, ScoreShardWriter, read_scores
from tasks.caching.stage_cache import run_stage
from tasks.sharding.result_store import index_store, publish_segment, read_verified
from tasks.stages.pins import PinError, check_pins, pinned_output, pins_of


def _pairs(ids: list[str], texts: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "src_lang": ["de"] * n, "tgt_lang": ["en"] * n, "src": texts,
                     "tgt": [t.upper() for t in texts]})


def _segment(path: Path, keys: list[str], seed_ids: list[str]) -> None:
    """A score segment whose benefits encode each row's text (its key), so a misplaced row shows."""
    rng = np.random.default_rng(abs(hash(tuple(keys))) % 2**32)
    n = len(keys)
    with ScoreShardWriter(path, seed_ids, 4) as w:
        w.write(ScoreBatch(ids=keys, ok=np.ones(n, bool), bad_reason=[None] * n, loss=rng.random(n),
                           n_tokens=np.arange(n) + 1, benefit=rng.standard_normal((n, len(seed_ids))),
                           features=rng.standard_normal((n, 4)).astype(np.float32), grad_norm=rng.random(n)))


def test_content_keys_follow_the_text_not_the_id_or_row() -> None:
    a = _pairs(["x1", "x2", "x3"], ["eins", "zwei", "eins"])
    b = _pairs(["other", "ids"], ["zwei", "eins"])
    ka, kb = content_keys(a), content_keys(b)
    assert ka[0] == ka[2] == kb[1] and ka[1] == kb[0] and ka[0] != ka[1]
    assert content_keys(_pairs(["x"], ["eins"]).set_column(1, "src_lang", pa.array(["fr"]))) != [ka[0]]
    rows = unique_rows(a, ka)
    assert rows.column("id").to_pylist() == [ka[0], ka[1]] and rows.column("src").to_pylist() == ["eins", "zwei"]
    assert unique_rows(a, ka, {ka[1]}).column("src").to_pylist() == ["zwei"]
    assert segment_name(ka[:2]) == segment_name(list(ka[:2])) != segment_name(ka[1:])


def test_assemble_writes_stored_rows_in_pool_order_under_pool_ids(tmp_path: Path) -> None:
    texts = [f"satz {i}" for i in range(10)]
    keys = content_keys(_pairs([f"a{i}" for i in range(10)], texts))
    seeds = ["s0", "s1", "s2"]
    _segment(tmp_path / "seg0.parquet", keys[:6], seeds)
    _segment(tmp_path / "seg1.parquet", keys[6:], seeds)
    stored = read_scores([tmp_path / "seg0.parquet", tmp_path / "seg1.parquet"])
    index = {k: (str(tmp_path / f"seg{0 if i < 6 else 1}.parquet"), i if i < 6 else i - 6) for i, k in enumerate(keys)}
    # A later pool: rows 2..9 shuffled, one of them twice (no dedup), under new ids.
    order = [7, 2, 9, 4, 3, 8, 5, 6, 2]
    ids = [f"new{i}" for i in range(len(order))]
    written = assemble(ids, [keys[i] for i in order], index, pq.read_table, tmp_path / "out", 4,
                       metadata={b"gdig.score_path": b'{"path": "exact"}'})
    assert [p.name for p in written] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    out = read_scores(written)
    assert list(out.ids) == ids
    for j, i in enumerate(order):
        np.testing.assert_array_equal(out.benefit[j], stored.benefit[i])  # copied, bit for bit
        np.testing.assert_array_equal(out.features[j], stored.features[i])
        assert out.loss[j] == stored.loss[i] and out.top_helped[j] == stored.top_helped[i]
    with pytest.raises(KeyError, match="no stored result"):
        assemble(["z"], ["k-unknown"], index, lambda loc: None, tmp_path / "x", 4)


def test_store_index_lists_verified_segments_only(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    keys = content_keys(_pairs(["a", "b", "c"], ["x", "y", "z"]))
    for part in (keys[:2], keys[2:]):
        local = tmp_path / "build" / segment_name(part)
        _segment(local, part, ["s"])
        publish_segment(local, str(Path(root) / segment_name(part)), part, {"n": len(part)})
    _segment(Path(root) / "seg-unfinished.parquet", ["k-half"], ["s"])  # no sidecar: a killed shard
    index = index_store(root, verify_digests=True)
    assert set(index.rows) == set(keys) and index.rows[keys[1]][1] == 1
    # Bytes changed in place (same size): not listed with digests verified, caught when read otherwise.
    seg = Path(index.rows[keys[2]][0])
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert set(index_store(root, verify_digests=True).rows) == set(keys[:2])
    lazy = index_store(root, verify_digests=False)
    assert keys[2] in lazy and read_verified(lazy, str(seg)) is None
    assert keys[2] not in index_store(root, verify_digests=False)  # unlisted until recomputed


def _stage(run_dir: Path, stage: str, files: dict[str, bytes], inputs: dict[str, str] | None = None):  # noqa: ANN202
    def compute(out: Path, work: Path) -> dict:
        for rel, data in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        return {}

    return run_stage(run_dir, stage, inputs or {}, "{}", [], compute)


def test_pins_are_checked_and_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    ref = _stage(tmp_path, "reference", {"model/config.json": b"{}", "model/weights.bin": b"w" * 64})
    factor_files = {f"factors-{m}.safetensors": m.encode() for m in ("ekfac", "kfac", "identity")}
    curv = _stage(tmp_path, "curvature", factor_files, {"reference": ref.digest("model")})
    cfg = GdigConfig()
    cfg.reference.enabled = True  # the default scores the base model, with nothing to pin but factors
    cfg.curvature.method = "ekfac"
    pins = pins_of(cfg, (str(ref.path("model")), ref.digest("model")), {"reference": curv})
    cfg.pin = PinConfig.model_validate(pins)
    check_pins(cfg)  # the pins a run printed are accepted
    assert pinned_output(cfg.pin.reference, "reference", "pin.reference").digest("model") == ref.digest("model")

    wrong = cfg.model_copy(deep=True)
    wrong.pin.reference = PinnedStage(dir=ref.dir, hash="0" * 64)
    with pytest.raises(PinError, match=r"pin.reference.hash: .* not the pinned 0{64}: refusing"):
        check_pins(wrong)
    swapped = cfg.model_copy(deep=True)
    swapped.pin.reference = PinnedStage(dir=curv.dir, hash=ref.digest("model"))
    with pytest.raises(PinError, match="is a 'curvature' stage output, not 'reference'"):
        check_pins(swapped)
    # Bytes changed under a correct hash: refused once the bytes are checked.
    (Path(ref.dir) / "model" / "weights.bin").write_bytes(b"W" * 64)
    check_pins(cfg, verify_bytes=False)
    with pytest.raises(PinError, match="weights.bin: content differs"):
        check_pins(cfg)
    # A factor set without the projected factors cannot serve the gradient store.
    store = cfg.model_copy(deep=True)
    store.pin.reference = None
    store.scoring.store.enabled = True
    with pytest.raises(PinError, match=r"pin.factors.reference: .* lacks \['projected-factors-ekfac.safetensors'\]"):
        check_pins(store)
    assert json.loads(json.dumps(pins))["factors"]["reference"]["dir"] == curv.dir
