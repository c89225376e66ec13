"""The QE score (gdig_core.filters.qe): both directions' NLL equal a direct computation with the model's own
loss on the prompt each way, the score is the dual cross-entropy formula, and the pool pass resumes
from its pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from gdig_core.config import GdigConfig
from gdig_core.data.encoding import collate, encode_pairs
from gdig_core.filters.qe import dual_nll, dual_xent_score, read_qe, reversed_rows, score_pool
from gdig_core.training.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [
    {"id": "a", "src_lang": "de", "tgt_lang": "en", "src": "Das Haus ist klein.", "tgt": "The house is small."},
    {"id": "b", "src_lang": "de", "tgt_lang": "en", "src": "Wir fahren morgen nach Berlin.",
     "tgt": "We are going to Berlin tomorrow."},
    {"id": "c", "src_lang": "de", "tgt_lang": "en", "src": "Der Zug hat Verspätung.", "tgt": "Der Zug hat Verspätung."},
]


def _cfg() -> GdigConfig:
    cfg = GdigConfig()
    cfg.model.device = "cpu"
    cfg.prompt.max_length = 96
    return cfg


def _direct_nll(model, tok, row: dict, cfg: GdigConfig) -> float:  # noqa: ANN001
    """Per-token NLL of the row's target from the model's own (HF) loss, one row at a time."""
    (enc,) = encode_pairs(tok, [row], cfg)
    with torch.no_grad():
        return float(model(**collate([enc], tok.pad_token_id)).loss)


def test_both_directions_equal_the_models_own_loss(tiny_model_dir: Path) -> None:
    cfg = _cfg()
    model, tok = load_model(cfg.model, path=tiny_model_dir)
    table = dual_nll(model, tok, ROWS, cfg, batch_size=2).to_pylist()
    assert [r["id"] for r in table] == ["a", "b", "c"]
    for row, got, back in zip(ROWS, table, reversed_rows(ROWS), strict=True):
        assert back["src"] == row["tgt"] and back["tgt"] == row["src"] and back["src_lang"] == "en"
        assert got["nll_fwd"] == pytest.approx(_direct_nll(model, tok, row, cfg), rel=1e-4)
        assert got["nll_bwd"] == pytest.approx(_direct_nll(model, tok, back, cfg), rel=1e-4)
        # The reversed prompt asks for German: "Translate the following text into German".
        (enc,) = encode_pairs(tok, [back], cfg)
        assert "German" in tok.decode(enc.input_ids[: enc.prompt_len])
        assert got["qe"] == pytest.approx(-(abs(got["nll_fwd"] - got["nll_bwd"]) + (got["nll_fwd"] + got["nll_bwd"]) / 2))


def test_dual_xent_prefers_likely_and_agreeing_directions() -> None:
    score = dual_xent_score(np.array([1.0, 1.0, 3.0]), np.array([1.0, 3.0, 3.0]))
    assert score.tolist() == [-1.0, -4.0, -3.0]  # agreement and likelihood both count


def test_pool_pass_resumes_from_its_pieces(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from gdig_core.filters import qe

    cfg = _cfg()
    model, tok = load_model(cfg.model, path=tiny_model_dir)
    monkeypatch.setattr(qe, "CHUNK_ROWS", 2)
    pairs = pa.Table.from_pylist(ROWS)
    whole = score_pool(model, tok, pairs, cfg, 4, tmp_path / "w")
    pieces = sorted((tmp_path / "w").glob("qe-*.parquet"))
    assert len(pieces) == 2 and [read_qe(p).num_rows for p in pieces] == [2, 1]
    calls = []
    real = qe.dual_nll
    monkeypatch.setattr(qe, "dual_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    pieces[1].unlink()  # as if killed before the last piece was written
    again = score_pool(model, tok, pairs, cfg, 4, tmp_path / "w")
    assert len(calls) == 1 and again.equals(whole)
