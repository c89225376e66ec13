"""`gdig data corrupt`: deterministic, labelled noise of every kind, on real pool pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gdig_core.config import DataConfig, DatasetSpec
from gdig_core.data import prepare_data, read_dataset
from gdig_core.noise import NOISE_KINDS, corrupt_pairs


@pytest.fixture(scope="module")
def pool(data_dir: Path):
    return read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=300), DataConfig(data_dir=str(data_dir)), "pool").table


def test_every_kind_is_applied_and_labelled(pool, data_dir: Path) -> None:
    third = (data_dir / "zh-en" / "flores.dev.tsv").read_text(encoding="utf-8").splitlines()
    third = [line.split("\t")[0] for line in third]
    hyps = {i: "weak " + s for i, s in zip(pool.column("id").to_pylist(), pool.column("src").to_pylist(), strict=True)}
    out = corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=1, third_language_texts=third, mt_hypotheses=hyps)
    rows = out.to_pylist()
    counts = {k: sum(r["noise"] == k for r in rows) for k in ("clean", *NOISE_KINDS)}
    assert counts["clean"] == 300 - 90 and all(counts[k] == 18 for k in NOISE_KINDS)
    srcs = set(pool.column("src").to_pylist())
    tgts = set(pool.column("tgt").to_pylist())
    for r in rows:
        if r["noise"] == "clean":
            assert r["tgt"] == r["original_tgt"]
            continue
        assert r["tgt"] != r["original_tgt"]
        if r["noise"] == "misaligned":
            assert r["tgt"] in tgts
        elif r["noise"] == "source_copy":
            assert r["tgt"] == r["src"]
        elif r["noise"] == "truncated":
            assert len(r["tgt"].split()) < len(r["original_tgt"].split()) / 2 + 0.5
            assert r["original_tgt"].startswith(r["tgt"])
        elif r["noise"] == "wrong_language":
            assert r["tgt"] in third
        elif r["noise"] == "low_quality_mt":
            assert r["tgt"] == hyps[r["id"]]
    assert not any(r["tgt"] in srcs for r in rows if r["noise"] == "misaligned")


def test_deterministic_and_seeded(pool) -> None:
    a = corrupt_pairs(pool, 0.3, NOISE_KINDS[:4], seed=0)
    b = corrupt_pairs(pool, 0.3, NOISE_KINDS[:4], seed=0)
    c = corrupt_pairs(pool, 0.3, NOISE_KINDS[:4], seed=1)
    assert a.equals(b) and not a.equals(c)


def test_bad_arguments(pool) -> None:
    with pytest.raises(ValueError, match="unknown noise kinds"):
        corrupt_pairs(pool, 0.3, ["typo"])
    with pytest.raises(ValueError, match="needs mt_hypotheses"):
        corrupt_pairs(pool, 0.3, ["low_quality_mt"])
    with pytest.raises(ValueError, match="fraction"):
        corrupt_pairs(pool, 1.5)


def test_cli_output_keeps_labels_through_prepare_data(tmp_path: Path, data_dir: Path) -> None:
    from gdig_cli.main import main

    noisy = tmp_path / "noisy.jsonl"
    src = data_dir / "de-en" / "pool.wmt17-20.jsonl"
    assert main(["data", "corrupt", str(src), str(noisy), "--fraction", "0.3", "--seed", "2"]) == 0
    rows = [json.loads(x) for x in noisy.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 12000 and {r["noise"] for r in rows} == {"clean", *NOISE_KINDS[:4]}
    cfg = DataConfig(
        data_dir=str(data_dir), pool=DatasetSpec(path=str(noisy), sample=500), seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=8)
    )
    summary = prepare_data(cfg, tmp_path / "out")
    labels = pq.read_table(tmp_path / "out" / "noise_labels.parquet").to_pylist()
    assert len(labels) == summary["pool"]["rows_kept"] == 500
    assert sum(summary["pool"]["noise_labels"].values()) == 500
