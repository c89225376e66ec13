"""Fuzzing the dataset readers: pool and seed files in every text format and Parquet, and test sets
(parallel text). Rules: tests/fuzz_support.py. A pool with quarantine on must quarantine every bad
row (a fatal error there may only be about the whole file); a seed or test set must refuse with the
file, line and field; what is kept is text that UTF-8, Arrow and the outputs take."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_support import FUZZ, count, sandbox, traceback_guard
from hypothesis import given
from hypothesis import strategies as st

from gdig_core.config import DataConfig, DatasetSpec
from gdig_core.data.pairs import DataError, write_jsonl, write_pairs
from gdig_core.data.readers import read_dataset
from gdig_core.data.text_checks import text_problem

pytestmark = pytest.mark.timeout(600)

# Characters that broke readers or would: surrogates, controls, separators, a BOM, wide scripts.
_HOSTILE = ["\ud800", "\udfff", "\udc80", "\x00", "\x1b", "\x7f", "\x85", "\t", "\n", "\r", "\u2028", "\ufeff",
            "\u200b", "é", "中", "🙂", "\\", '"']
CHARS = st.one_of(st.characters(), st.sampled_from(_HOSTILE))
TEXT = st.text(CHARS, max_size=40)
WORDS = st.sampled_from(["Guten Tag", "Hallo Welt", "ein Satz", "Good day", "hello world", "a sentence", " ", ""])
SCALAR = st.one_of(TEXT, WORDS, st.integers(), st.floats(), st.none(), st.booleans())
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))
LANG = st.sampled_from(["de", "en", "xx", "", "zh", "DE"])

_pair = st.fixed_dictionaries(
    {"src": st.one_of(WORDS, TEXT, VALUE), "tgt": st.one_of(WORDS, TEXT, VALUE)},
    optional={"id": st.one_of(TEXT, st.integers(), VALUE), "src_lang": LANG, "tgt_lang": LANG,
              "noise": st.one_of(st.sampled_from(["clean", "misaligned"]), TEXT), "extra": VALUE},
)
_GOOD = st.tuples(st.sampled_from(["Guten Tag", "Hallo Welt", "ein Satz"]),
                  st.sampled_from(["Good day", "hello world", "a sentence"]), st.integers(0, 20))
GOOD_JSON = _GOOD.map(lambda t: json.dumps({"src": f"{t[0]} {t[2]}", "tgt": f"{t[1]} {t[2]}"}).encode())
GOOD_TSV = _GOOD.map(lambda t: f"{t[0]} {t[2]}\t{t[1]} {t[2]}".encode())
HOSTILE_JSON = st.one_of(
    _pair.map(lambda d: json.dumps(d, ensure_ascii=True).encode()),  # \\ud800 escapes: valid JSON
    _pair.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),  # raw surrogate bytes
    VALUE.map(lambda v: json.dumps(v).encode()),  # a JSON line that is no object
    st.binary(max_size=60),
    st.sampled_from([b"", b"{", b'{"src": "a", "tgt": ', b"\xef\xbb\xbf", b"\x00" * 10, b"null", b"[1, 2]"]),
    st.integers(100, 3000).map(lambda n: json.dumps({"src": "x" * n, "tgt": "y"}).encode()),
)


def half_good(good: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Half the rows valid, so most files are pools with bad rows, not all-bad files (one_of would
    flatten the hostile branches and give the valid row one chance in seven)."""
    return st.booleans().flatmap(lambda ok: good if ok else hostile)


JSON_LINE = half_good(GOOD_JSON, HOSTILE_JSON)
TSV_LINE = half_good(GOOD_TSV, st.one_of(
    st.tuples(st.one_of(WORDS, TEXT), st.one_of(WORDS, TEXT)).map(
        lambda t: f"{t[0]}\t{t[1]}".encode("utf-8", "surrogatepass")),
    st.lists(TEXT, max_size=4).map(lambda cols: "\t".join(cols).encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
))
TEXT_LINE = half_good(_GOOD.map(lambda t: f"{t[0]} {t[2]}".encode()), st.one_of(
    WORDS.map(str.encode), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=40)))


def _file(lines: list[bytes], crlf: bool, bom: bool, trailing: bool) -> bytes:
    body = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n" if trailing and lines else b"")
    return (b"\xef\xbb\xbf" if bom else b"") + body


FILE_SHAPE = st.tuples(st.booleans(), st.booleans(), st.booleans())
DATA_CFG = st.fixed_dictionaries({
    "max_chars": st.sampled_from([14, 60, 1000]), "max_line_bytes": st.sampled_from([80, 300, 1 << 20]),
    "dedup": st.booleans(), "quarantine_pool": st.sampled_from([True, True, True, False]),
})


def _check_accepted(surface: str, result, paths: list[Path], role: str, sandbox_dir: Path, sample) -> None:
    stats = result.stats
    if sample is None:
        assert stats["rows_read"] == (stats["rows_kept"] + stats["duplicates_removed"] + stats["quarantined"]
                                      + stats["filtered_by_length"]), stats
    assert stats["quarantined"] == len(result.quarantine)
    for record in result.quarantine:
        assert record["file"] in {str(p) for p in paths} and record["reason"], record
        assert len(record["raw"]) < 1200
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    for column in ("id", "src", "tgt", "src_lang", "tgt_lang"):
        for value in result.table.column(column).to_pylist():
            assert isinstance(value, str) and (column == "id" or text_problem(value) is None), (column, value)
    write_pairs(result.table, sandbox_dir / "out" / "pairs.parquet")  # where a surrogate once killed the run
    write_jsonl(result.quarantine, sandbox_dir / "out" / "quarantine.jsonl")
    count(surface, "quarantined" if result.quarantine else "accepted")


def _check_refused(surface: str, err: DataError, paths: list[Path], role: str, quarantine: bool) -> None:
    message = str(err)
    assert any(message.startswith(str(p)) for p in paths), message
    if err.line is not None:
        assert f"line {err.line}" in message
        assert not (role == "pool" and quarantine), f"a bad pool row was fatal with quarantine on: {message}"
    count(surface, "refused")


def _read(surface: str, base: Path, write, fmt: str, role: str, cfg_kw: dict, sample=None, tgt: bool = False) -> None:
    with sandbox(base, surface) as box:
        paths = write(box)
        spec = DatasetSpec(path=str(paths[0]), tgt_path=str(paths[1]) if tgt else None, format=fmt, sample=sample)
        cfg = DataConfig(data_dir=str(box), **cfg_kw)
        try:
            result = read_dataset(spec, cfg, role)
        except DataError as err:
            _check_refused(surface, err, paths, role, cfg.quarantine_pool)
        except Exception as err:  # noqa: BLE001 - any other exception is a traceback the user would see
            traceback_guard(surface, err)
        else:
            _check_accepted(surface, result, paths, role, box, sample)


@pytest.mark.parametrize("role", ["pool", "seed"])
@FUZZ
@given(lines=st.lists(JSON_LINE, min_size=1, max_size=10), shape=FILE_SHAPE, cfg=DATA_CFG,
       fmt=st.sampled_from(["auto", "jsonl"]), sample=st.one_of(st.none(), st.integers(1, 4)))
def test_fuzz_jsonl(tmp_path: Path, role: str, lines, shape, cfg, fmt, sample) -> None:
    def write(box: Path) -> list[Path]:
        path = box / "pairs.jsonl"
        path.write_bytes(_file(lines, *shape))
        return [path]

    _read(f"{role} jsonl", tmp_path, write, fmt, role, cfg, sample)


@pytest.mark.parametrize("role", ["pool", "seed"])
@FUZZ
@given(lines=st.lists(TSV_LINE, min_size=1, max_size=10), shape=FILE_SHAPE, cfg=DATA_CFG, fmt=st.sampled_from(["auto", "tsv"]))
def test_fuzz_tsv(tmp_path: Path, role: str, lines, shape, cfg, fmt) -> None:
    def write(box: Path) -> list[Path]:
        path = box / "pairs.tsv"
        path.write_bytes(_file(lines, *shape))
        return [path]

    _read(f"{role} tsv", tmp_path, write, fmt, role, cfg)


@pytest.mark.parametrize("role", ["pool", "test"])
@FUZZ
@given(src=st.lists(TEXT_LINE, min_size=1, max_size=6), tgt=st.lists(TEXT_LINE, min_size=1, max_size=6),
       aligned=st.booleans(), shape=FILE_SHAPE, cfg=DATA_CFG)
def test_fuzz_parallel_text(tmp_path: Path, role: str, src, tgt, aligned, shape, cfg) -> None:
    if aligned:  # half the inputs line-aligned, so their rows are read
        tgt = (tgt * len(src))[: len(src)]

    def write(box: Path) -> list[Path]:
        (box / "a.de").write_bytes(_file(src, *shape))
        (box / "a.en").write_bytes(_file(tgt, *shape))
        return [box / "a.de", box / "a.en"]

    _read(f"{role} parallel", tmp_path, write, "parallel", role, cfg, tgt=True)


_ARROW_VALUE = half_good(_GOOD.map(lambda t: f"{t[0]} {t[2]}"),
                         st.one_of(st.none(), st.text(st.characters(), max_size=20), WORDS, LANG))
_COLUMNS = st.lists(st.sampled_from(["id", "src_lang", "tgt_lang", "noise", "other"]), max_size=4, unique=True).flatmap(
    lambda extra: st.sampled_from([["src", "tgt"]] * 4 + [["src"], ["tgt"], []]).map(lambda core: core + extra))


@FUZZ
@given(columns=_COLUMNS, n=st.integers(0, 5), data=st.data(), cfg=DATA_CFG,
       damage=st.sampled_from(["none", "none", "none", "truncate", "garbage", "ints"]))
def test_fuzz_parquet(tmp_path: Path, columns, n, data, cfg, damage) -> None:
    def write(box: Path) -> list[Path]:
        path = box / "pairs.parquet"
        if damage == "garbage":
            path.write_bytes(data.draw(st.binary(max_size=200)))
            return [path]
        table = {c: pa.array([data.draw(_ARROW_VALUE) for _ in range(n)], pa.string()) for c in columns}
        if damage == "ints" and columns:
            table[columns[0]] = pa.array(list(range(n)), pa.int64())
        pq.write_table(pa.table(table) if table else pa.table({"x": []}), path)
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, 60))])
        return [path]

    _read("pool parquet", tmp_path, write, data.draw(st.sampled_from(["auto", "parquet"])), "pool", cfg)


@FUZZ
@given(kind=st.sampled_from(["directory", "dev-zero", "fifo", "missing", "etc-passwd", "binary"]),
       fmt=st.sampled_from(["auto", "jsonl", "tsv", "parquet", "hf"]), role=st.sampled_from(["pool", "seed", "test"]))
def test_fuzz_files_that_are_no_dataset(tmp_path: Path, kind, fmt, role) -> None:
    import os

    def write(box: Path) -> list[Path]:
        path = box / ("pool.jsonl" if fmt == "auto" else "pool")
        if kind == "directory":
            path.mkdir()
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "etc-passwd":
            path.symlink_to("/etc/passwd")
        elif kind == "binary":
            path.write_bytes(bytes(range(256)) * 40)
        return [path]

    _read("files no dataset", tmp_path, write, fmt, role, {})
