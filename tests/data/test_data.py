"""The data layer on the real MT files and on deliberately broken copies of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gdig_core.config import DataConfig, DatasetSpec
from gdig_core.data.pairs import DataError, read_pairs, table_sha256
from gdig_core.data.prepare import prepare_data
from gdig_core.data.readers import read_dataset


def _cfg(data_dir: Path, **kw) -> DataConfig:
    return DataConfig(data_dir=str(data_dir), **kw)


def _first_lines(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


# ---------------------------------------------------------------- the three real text formats


def test_real_jsonl_pool(data_dir: Path) -> None:
    res = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl"), _cfg(data_dir), "pool")
    assert res.stats["rows_read"] == 12202
    assert res.table.num_rows + res.stats["duplicates_removed"] + res.stats["quarantined"] == 12202
    assert res.table.column("id")[0].as_py() == "wmt17-20.de-en.0"
    assert set(res.table.column("src_lang").to_pylist()) == {"de"}


def test_real_tsv_seed(data_dir: Path) -> None:
    res = read_dataset(DatasetSpec(path="zh-en/flores.dev.tsv", src_lang="zh"), _cfg(data_dir), "seed")
    assert res.table.num_rows == 997
    assert res.stats["languages"] == {"zh-en": 997}


@pytest.mark.parametrize(("pair", "lang", "n"), [("de-en", "de", 1012), ("zh-en", "zh", 1012)])
def test_real_parallel_test_sets_are_read_whole(data_dir: Path, pair: str, lang: str, n: int) -> None:
    spec = DatasetSpec(path=f"{pair}/flores.devtest.{lang}", tgt_path=f"{pair}/flores.devtest.en", src_lang=lang)
    res = read_dataset(spec, _cfg(data_dir), "test")
    assert res.table.num_rows == n
    ids = res.table.column("id").to_pylist()
    assert ids[0] == f"flores.devtest.{lang}:1" and len(set(ids)) == n


def test_wmt22_keeps_duplicates_and_long_lines(data_dir: Path) -> None:
    spec = DatasetSpec(path="zh-en/wmt22.zh", tgt_path="zh-en/wmt22.en", src_lang="zh")
    assert read_dataset(spec, _cfg(data_dir), "test").table.num_rows == 1875


def test_parquet_and_saved_datasets_roundtrip(tmp_path: Path, data_dir: Path) -> None:
    import datasets

    base = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=50), _cfg(data_dir), "pool").table
    pq.write_table(base, tmp_path / "pool.parquet")
    datasets.Dataset(base).save_to_disk(str(tmp_path / "hfds"))
    for spec in (DatasetSpec(path=str(tmp_path / "pool.parquet")), DatasetSpec(path=str(tmp_path / "hfds"))):
        again = read_dataset(spec, _cfg(data_dir), "pool").table
        assert again.column("id").to_pylist() == base.column("id").to_pylist()
        assert table_sha256(again) == table_sha256(base)


# ---------------------------------------------------------------- ids, dedup, sampling


def test_content_ids_are_stable_and_dedup_counts(tmp_path: Path, data_dir: Path) -> None:
    rows = _first_lines(data_dir / "de-en" / "flores.dev.tsv", 5)
    path = tmp_path / "dups.tsv"
    path.write_text("\n".join(rows + rows[:2]) + "\n", encoding="utf-8")
    a = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    b = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    assert a.table.num_rows == 5 and a.stats["duplicates_removed"] == 2
    assert a.table.column("id").to_pylist() == b.table.column("id").to_pylist()
    assert all(i.startswith("h") and len(i) == 17 for i in a.table.column("id").to_pylist())
    off = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir, dedup=False), "pool")
    assert off.stats["duplicates_removed"] == 0
    assert off.stats["quarantined_by_reason"] == {"duplicate id": 2}


def test_seed_sampling_is_deterministic_and_seeded(data_dir: Path) -> None:
    spec = DatasetSpec(path="de-en/flores.dev.tsv", sample=200)
    a = read_dataset(spec, _cfg(data_dir), "seed").table.column("id").to_pylist()
    b = read_dataset(spec, _cfg(data_dir), "seed").table.column("id").to_pylist()
    c = read_dataset(spec, _cfg(data_dir, sample_seed=1), "seed").table.column("id").to_pylist()
    assert a == b and len(a) == 200 and len(set(a)) == 200
    assert a != c


def test_prepare_data_writes_files_and_removes_seed_overlap(tmp_path: Path, data_dir: Path) -> None:
    seed_rows = _first_lines(data_dir / "de-en" / "flores.dev.tsv", 10)
    pool = tmp_path / "pool.jsonl"
    with open(pool, "w", encoding="utf-8") as fh:
        for line in _first_lines(data_dir / "de-en" / "pool.wmt17-20.jsonl", 20):
            fh.write(line + "\n")
        src, tgt = seed_rows[0].split("\t")
        fh.write(json.dumps({"id": "leak", "src_lang": "de", "tgt_lang": "en", "src": src, "tgt": tgt}) + "\n")
    seed = tmp_path / "seed.tsv"
    seed.write_text("\n".join(seed_rows) + "\n", encoding="utf-8")
    cfg = _cfg(data_dir, pool=DatasetSpec(path=str(pool)), seed=DatasetSpec(path=str(seed)))
    summary = prepare_data(cfg, tmp_path / "out")
    out_pool = read_pairs(tmp_path / "out" / "pool.parquet")
    assert "leak" not in out_pool.column("id").to_pylist() and out_pool.num_rows == 20
    assert summary["pool"]["quarantined_by_reason"]["source also in the seed set"] == 1
    quarantined = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [q["raw"] for q in quarantined] == ["leak"]
    assert not list((tmp_path / "out").glob(".*tmp"))


# ---------------------------------------------------------------- bad input, against real rows


@pytest.fixture()
def real_jsonl_rows(data_dir: Path) -> list[dict]:
    return [json.loads(x) for x in _first_lines(data_dir / "de-en" / "pool.wmt17-20.jsonl", 6)]


def _write_jsonl(path: Path, rows: list, broken_at: int | None = None, broken: str = "") -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if broken_at is not None:
        lines.insert(broken_at, broken)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _mutated(rows: list[dict], index: int, **changes) -> list[dict]:
    out = [dict(r) for r in rows]
    for key, value in changes.items():
        if value is _DELETE:
            out[index].pop(key)
        else:
            out[index][key] = value
    return out


_DELETE = object()

BAD_JSONL_CASES = [
    # (description, mutation, expected line, expected field, reason fragment)
    ("missing field", {"tgt": _DELETE}, "tgt", "missing"),
    ("empty field", {"src": "   "}, "src", "empty"),
    ("non-string field", {"tgt": 42}, "tgt", "must be a string"),
    ("unknown language", {"src_lang": "xx"}, "src_lang", "unknown language code 'xx'"),
    ("over length limit", {"src": "Wort " * 300}, "src", "longer than max_chars"),
]


@pytest.mark.parametrize(("desc", "change", "field", "fragment"), BAD_JSONL_CASES)
def test_bad_field_is_fatal_for_seed_and_quarantined_for_pool(
    tmp_path: Path, data_dir: Path, real_jsonl_rows: list[dict], desc: str, change: dict, field: str, fragment: str
) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", _mutated(real_jsonl_rows, 3, **change))
    spec = DatasetSpec(path=str(path))
    with pytest.raises(DataError) as info:
        read_dataset(spec, _cfg(data_dir), "seed")
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 4, field), desc
    assert fragment in str(err) and "line 4" in str(err) and f"'{field}'" in str(err)

    res = read_dataset(spec, _cfg(data_dir), "pool")
    assert res.table.num_rows == 5 and res.stats["quarantined"] == 1
    (record,) = res.quarantine
    assert record["line"] == 4 and record["field"] == field and fragment in record["reason"]

    with pytest.raises(DataError):
        read_dataset(spec, _cfg(data_dir, quarantine_pool=False), "pool")


def test_broken_json_line(tmp_path: Path, data_dir: Path, real_jsonl_rows: list[dict]) -> None:
    path = _write_jsonl(tmp_path / "broken.jsonl", real_jsonl_rows, broken_at=2, broken='{"src": "Hallo", "tgt": ')
    with pytest.raises(DataError, match=r"line 3: broken JSON"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "seed")
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    assert res.table.num_rows == 6 and res.stats["quarantined_by_reason"] == {"broken JSON": 1}


def test_undecodable_bytes(tmp_path: Path, data_dir: Path) -> None:
    rows = _first_lines(data_dir / "de-en" / "flores.dev.tsv", 4)
    path = tmp_path / "latin1.tsv"
    data = "\n".join(rows).encode("utf-8") + b"\nGr\xfc\xdfe aus K\xf6ln\tGreetings from Cologne\n"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"line 5: undecodable bytes"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "test")
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    assert res.table.num_rows == 4 and res.quarantine[0]["line"] == 5


def test_tsv_wrong_column_count(tmp_path: Path, data_dir: Path) -> None:
    rows = _first_lines(data_dir / "de-en" / "flores.dev.tsv", 4)
    rows[1] = rows[1] + "\textra column"
    rows[2] = rows[2].split("\t")[0]
    path = tmp_path / "cols.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: expected 2 tab-separated columns, found 3"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "seed")
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    assert [q["line"] for q in res.quarantine] == [2, 3] and res.table.num_rows == 2


def test_parallel_files_with_different_line_counts(tmp_path: Path, data_dir: Path) -> None:
    src = _first_lines(data_dir / "de-en" / "flores.devtest.de", 10)
    tgt = _first_lines(data_dir / "de-en" / "flores.devtest.en", 9)
    (tmp_path / "a.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    spec = DatasetSpec(path=str(tmp_path / "a.de"), tgt_path=str(tmp_path / "a.en"))
    for role in ("pool", "test"):  # misalignment is never quarantinable
        with pytest.raises(DataError, match="has 9 lines but .*a.de has 10"):
            read_dataset(spec, _cfg(data_dir), role)


def test_parallel_empty_line_is_located(tmp_path: Path, data_dir: Path) -> None:
    src = _first_lines(data_dir / "de-en" / "flores.devtest.de", 5)
    tgt = _first_lines(data_dir / "de-en" / "flores.devtest.en", 5)
    tgt[3] = ""
    (tmp_path / "b.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    spec = DatasetSpec(path=str(tmp_path / "b.de"), tgt_path=str(tmp_path / "b.en"))
    with pytest.raises(DataError, match=r"line 4: field 'tgt': empty"):
        read_dataset(spec, _cfg(data_dir), "test")


def test_missing_file_and_parquet_missing_column(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_dataset(DatasetSpec(path=str(tmp_path / "nope.jsonl")), _cfg(data_dir), "pool")
    pq.write_table(pa.table({"src": ["Hallo"], "text": ["Hello"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"line 1: field 'tgt': missing"):
        read_dataset(DatasetSpec(path=str(tmp_path / "x.parquet")), _cfg(data_dir), "seed")


def test_all_rows_bad_is_fatal_even_for_pool(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "allbad.jsonl"
    path.write_text('{"src": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no valid pairs"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")


# ---------------------------------------------------------------- the CLI


def test_data_check_cli(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from gdig_cli.main import main

    assert main(["data", "check", str(data_dir / "de-en" / "pool.wmt17-20.jsonl"), "--json"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["rows_read"] == 12202 and summary["duplicates_removed"] >= 1
    assert summary["quarantined_by_reason"] == {"longer than max_chars=1000": summary["quarantined"]}

    bad = tmp_path / "bad.tsv"
    bad.write_text("eins\tone\nzwei\n", encoding="utf-8")
    assert main(["data", "check", str(bad)]) == 0
    assert "expected 2 tab-separated columns" in capsys.readouterr().out
    assert main(["data", "check", "--strict", str(bad)]) == 2
    assert f"{bad}, line 2" in capsys.readouterr().err


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path, data_dir: Path) -> None:
    import os

    cfg = _cfg(data_dir, pool=DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=20),
               seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=4))
    prepare_data(cfg, tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("pool.parquet", "seed.parquet", "quarantine.jsonl", "data_summary.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_length_filter_is_counted_and_applied_before_sampling(data_dir: Path) -> None:
    cfg = DataConfig(data_dir=str(data_dir))
    spec = DatasetSpec(path="de-en/pool.wmt17-20.jsonl", max_chars=120, sample=50)
    res = read_dataset(spec, cfg, "pool")
    rows = res.table.to_pylist()
    assert len(rows) == 50 and all(len(r["src"]) <= 120 and len(r["tgt"]) <= 120 for r in rows)
    assert res.stats["filtered_by_length"] > 1000 and res.stats["quarantined"] < res.stats["filtered_by_length"]


def test_data_noise_corrupts_the_sampled_pool_and_labels_every_row(tmp_path: Path, data_dir: Path) -> None:
    import pyarrow.parquet as pq

    from gdig_core.config import NoiseConfig, WeakMTConfig

    calls: list[list[str]] = []

    def weak(sources: list[str]) -> list[str]:
        calls.append(list(sources))
        return [f"weak {s}" for s in sources]

    noise = NoiseConfig(fraction=0.3, kinds=["misaligned", "truncated", "low_quality_mt"], seed=3, weak_mt=WeakMTConfig())
    cfg = DataConfig(data_dir=str(data_dir), pool=DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=120, max_chars=200),
                     seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=4), noise=noise)
    summary = prepare_data(cfg, tmp_path / "out", weak_translator=weak)
    labels = pq.read_table(tmp_path / "out" / "noise_labels.parquet").to_pylist()
    pool = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "pool.parquet").to_pylist()}
    assert len(labels) == len(pool) == 120 and summary["pool"]["noise_labels"]["clean"] == 84
    assert all(summary["pool"]["noise_labels"][k] == 12 for k in ("misaligned", "truncated", "low_quality_mt"))
    assert len(calls) == 1 and len(calls[0]) == 12  # the weak system translates only the picked rows
    weak_rows = [pool[r["id"]] for r in labels if r["noise"] == "low_quality_mt"]
    assert all(r["tgt"] == f"weak {r['src']}" for r in weak_rows)
    again = prepare_data(cfg, tmp_path / "again", weak_translator=weak)
    assert again["pool"]["content_hash"] == summary["pool"]["content_hash"]  # deterministic
    with pytest.raises(ValueError, match="weak"):
        NoiseConfig(kinds=["low_quality_mt"])


# ---------------------------------------------------------------- hostile inputs (red team, issue 22)


def _pool_jsonl(path: Path, bad_lines: list[str], good: int = 3) -> Path:
    good_lines = [json.dumps({"src": f"Guten Tag {i}", "tgt": f"Good day {i}"}) for i in range(good)]
    path.write_text("\n".join(good_lines + bad_lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ('{"src": "Hallo \\ud800 Welt", "tgt": "Hello world"}', "src", "lone UTF-16 surrogate U+D800"),
        ('{"src": "Hallo", "tgt": "\\udfff"}', "tgt", "lone UTF-16 surrogate U+DFFF"),
        ('{"src": "NUL \\u0000 hier", "tgt": "nul here"}', "src", "control character U+0000"),
        ('{"src": "ESC", "tgt": "bell \\u0007"}', "tgt", "control character U+0007"),
        ('{"id": "x\\ud83d", "src": "ein Satz", "tgt": "a sentence"}', "id", "lone UTF-16 surrogate U+D83D"),
    ],
)
def test_surrogates_and_control_characters_are_quarantined_with_their_reason(
    tmp_path: Path, data_dir: Path, line: str, field: str, fragment: str
) -> None:
    """A lone surrogate is valid JSON but no UTF-8: it once reached pyarrow and killed the run."""
    path = _pool_jsonl(tmp_path / "pool.jsonl", [line])
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "pool")
    assert res.table.num_rows == 3 and res.stats["quarantined"] == 1
    (record,) = res.quarantine
    assert record["line"] == 4 and record["field"] == field and fragment in record["reason"]
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # the record itself is writable
    with pytest.raises(DataError, match=f"line 4: field '{field}': .*{re.escape(fragment)}"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir), "seed")


def test_surrogate_in_a_pool_row_does_not_stop_prepare_data_or_data_check(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from gdig_cli.main import main

    pool = _pool_jsonl(tmp_path / "pool.jsonl", ['{"src": "\\ud800", "tgt": "x"}', '{"src": "a\\u0000", "tgt": "b"}'])
    cfg = _cfg(data_dir, pool=DatasetSpec(path=str(pool)), seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=4))
    summary = prepare_data(cfg, tmp_path / "out")
    assert summary["pool"]["quarantined"] == 2
    kept = read_pairs(tmp_path / "out" / "pool.parquet").column("src").to_pylist()
    assert not any("\x00" in s for s in kept)  # an escaped NUL no longer reaches the selected data
    lines = (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert main(["data", "check", str(pool)]) == 0
    out = capsys.readouterr().out
    assert "lone UTF-16 surrogate" in out and "control character" in out


def test_quarantine_keeps_a_bounded_excerpt_of_a_huge_line(tmp_path: Path, data_dir: Path) -> None:
    path = _pool_jsonl(tmp_path / "pool.jsonl", [json.dumps({"src": "x" * 5_000_000, "tgt": "y"})])
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir, max_line_bytes=10_000_000), "pool")
    (record,) = res.quarantine
    assert "longer than max_chars" in record["reason"]
    assert len(record["raw"]) < 2000 and "characters in all" in record["raw"]


def test_lines_are_capped_before_they_are_decoded(tmp_path: Path, data_dir: Path) -> None:
    path = _pool_jsonl(tmp_path / "pool.jsonl", [json.dumps({"src": "x" * 5000, "tgt": "y"})])
    res = read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir, max_line_bytes=1000), "pool")
    (record,) = res.quarantine
    assert record["line"] == 4 and "longer than data.max_line_bytes=1000" in record["reason"]
    assert len(record["raw"]) < 2000
    with pytest.raises(DataError, match="line 4: .*max_line_bytes"):
        read_dataset(DatasetSpec(path=str(path)), _cfg(data_dir, max_line_bytes=1000), "seed")
    # The cap counts the line with its line break; a line of exactly the cap is kept.
    exact = tmp_path / "exact.tsv"
    exact.write_bytes(b"ab\tcd\n")
    assert read_dataset(DatasetSpec(path=str(exact)), _cfg(data_dir, max_line_bytes=6), "seed").table.num_rows == 1
    with pytest.raises(DataError, match="max_line_bytes=5"):
        read_dataset(DatasetSpec(path=str(exact)), _cfg(data_dir, max_line_bytes=5), "seed")


@pytest.mark.timeout(30)
def test_a_pool_that_is_a_symlink_to_dev_zero_is_refused_at_once(tmp_path: Path, data_dir: Path) -> None:
    link = tmp_path / "pool.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="not a regular file"):
        read_dataset(DatasetSpec(path=str(link)), _cfg(data_dir), "pool")


def test_a_directory_read_as_a_file_format_is_a_data_error(tmp_path: Path, data_dir: Path, capsys) -> None:
    from gdig_cli.main import main

    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_dataset(DatasetSpec(path=str(folder), format="jsonl"), _cfg(data_dir), "pool")
    assert main(["data", "check", "--format", "jsonl", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "is a directory" in err
