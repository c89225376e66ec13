"""`gdig data corrupt` / ``corrupt_pairs``: deterministic, labelled, realistic noise on real pool
pairs, each kind's construction, the weak translator and the CLI."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gdig_core.config import PROJECT_ROOT, DataConfig, DatasetSpec, ModelConfig
from gdig_core.data.noise import MODEL_FREE_KINDS, NOISE_KINDS, corrupt_pairs, unit_spans
from gdig_core.data.prepare import prepare_data
from gdig_core.data.readers import read_dataset


def weak(sources: list[str]) -> list[str]:
    return ["weak " + s for s in sources]


class RecordingTranslator:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, sources: list[str]) -> list[str]:
        self.calls.append(list(sources))
        return weak(sources)


@pytest.fixture(scope="module")
def pool(data_dir: Path) -> pa.Table:
    cfg = DataConfig(data_dir=str(data_dir), max_chars=200)
    return read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=300), cfg, "pool").table


@pytest.fixture(scope="module")
def third(data_dir: Path) -> list[str]:
    cfg = DataConfig(data_dir=str(data_dir), max_chars=200)
    table = read_dataset(DatasetSpec(path="zh-en/pool.wmt17-20.jsonl", sample=2000), cfg, "pool").table
    return table.column("src").to_pylist()


@pytest.fixture(scope="module")
def noisy(pool: pa.Table, third: list[str]) -> list[dict]:
    return corrupt_pairs(pool, 0.6, NOISE_KINDS, seed=1, third_language_texts=third, weak_translator=weak).to_pylist()


def of_kind(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if r["noise"] == kind]


def test_every_kind_is_applied_and_labelled(noisy: list[dict], pool: pa.Table) -> None:
    counts = {k: len(of_kind(noisy, k)) for k in ("clean", *NOISE_KINDS)}
    assert counts == {"clean": 120, **{k: 30 for k in NOISE_KINDS}}
    assert [r["id"] for r in noisy] == pool.column("id").to_pylist()
    assert [r["original_tgt"] for r in noisy] == pool.column("tgt").to_pylist()
    for r in noisy:
        assert (r["tgt"] == r["original_tgt"]) == (r["noise"] == "clean"), r


def test_deterministic_and_seeded(pool: pa.Table, third: list[str]) -> None:
    a = corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=0, third_language_texts=third, weak_translator=weak)
    b = corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=0, third_language_texts=third, weak_translator=weak)
    c = corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=1, third_language_texts=third, weak_translator=weak)
    assert a.equals(b) and not a.equals(c)
    assert a.column("noise").to_pylist() != c.column("noise").to_pylist()


def test_kinds_split_evenly_with_remainder_to_the_first(pool: pa.Table) -> None:
    out = corrupt_pairs(pool, 0.1, ["truncated", "misaligned", "source_copy", "wrong_language"], seed=3)
    labels = out.column("noise").to_pylist()
    assert [labels.count(k) for k in ("truncated", "misaligned", "source_copy", "wrong_language")] == [8, 8, 7, 7]


def test_misaligned_takes_the_closer_differing_neighbour(noisy: list[dict]) -> None:
    originals = [r["original_tgt"] for r in noisy]
    for row, r in enumerate(noisy):
        if r["noise"] != "misaligned":
            continue
        near = [originals[j] for j in (row - 1, row + 1) if 0 <= j < len(noisy) and originals[j] != originals[row]]
        assert r["tgt"] in near
        assert abs(len(r["tgt"]) - len(originals[row])) == min(abs(len(t) - len(originals[row])) for t in near)


def test_misaligned_falls_back_to_a_length_matched_donor() -> None:
    tgts = ["same"] * 3 + [f"target number {i:03d}" + "x" * i for i in range(30)]
    table = pa.table({"id": [str(i) for i in range(len(tgts))], "src": ["q"] * len(tgts), "tgt": tgts})
    for seed in range(5):
        out = corrupt_pairs(table, 1.0, ["misaligned"], seed=seed).column("tgt").to_pylist()
        # Row 1's neighbours have its own target: its donor is one of the 10 closest in length.
        closest = sorted(tgts[3:], key=lambda t: abs(len(t) - 4))[:10]
        assert out[1] in closest


def _unquote_untokenise(text: str) -> str:
    text = text.translate(str.maketrans({"„": '"', "“": '"', "”": '"', "‚": "'", "‘": "'", "’": "'", "«": '"', "»": '"'}))
    return re.sub(r" ([,.!?;:])", r"\1", text)


def test_source_copy_is_half_exact_half_lightly_edited(noisy: list[dict]) -> None:
    copies = of_kind(noisy, "source_copy")
    exact = [r for r in copies if r["tgt"] == r["src"]]
    edited = [r for r in copies if r["tgt"] != r["src"]]
    assert len(exact) == len(edited) == 15
    for r in edited:
        a, b = _unquote_untokenise(r["tgt"]), _unquote_untokenise(r["src"])
        # Only quotes, spacing before punctuation and the first letter's case changed.
        assert a[1:] == b[1:] and a[:1].lower() == b[:1].lower(), r
    assert any(" ." in r["tgt"] or " ," in r["tgt"] for r in edited)
    assert any(r["tgt"][:1] != r["src"][:1] for r in edited)


def _kept_units_ok(kept: int, total: int, low: float, high: float) -> bool:
    return 1 <= kept <= total - 1 and math.floor(low * total) <= kept <= math.ceil(high * total)


def test_truncated_keeps_30_to_70_percent_as_prefix_or_suffix(noisy: list[dict]) -> None:
    sides = set()
    for r in of_kind(noisy, "truncated"):
        orig, cut = r["original_tgt"], r["tgt"]
        total = len(unit_spans(orig))
        head = re.sub(r"[.!?]+$", "", cut)
        if orig.startswith(head):
            sides.add("prefix")
            # A trailing comma or dash may have been dropped before the full stop: one unit less.
            kept = len(unit_spans(orig[: len(head) + 1]))
            assert cut[-1:] in ".!?" or orig.rstrip()[-1:] not in ".!?", r
        else:
            sides.add("suffix")
            assert orig.endswith(cut[1:]) and orig[len(orig) - len(cut)].lower() == cut[0].lower(), r
            assert not cut[0].islower()
            kept = len(unit_spans(cut))
        assert _kept_units_ok(kept, total, 0.3, 0.7), r
    assert sides == {"prefix", "suffix"}


def test_truncation_cuts_characters_in_unsegmented_scripts() -> None:
    tgts = ["这是一个很长的中文句子用来测试截断。", "我们今天讨论数据选择的问题和方法。", "第三个句子也在这里。"]
    table = pa.table({"id": ["a", "b", "c"], "src": ["x y z"] * 3, "tgt": tgts})
    sides = set()
    for seed in range(4):
        for r in corrupt_pairs(table, 1.0, ["truncated"], seed=seed).to_pylist():
            orig, cut = r["original_tgt"], r["tgt"]
            assert " " not in cut and cut != orig
            head = cut.removesuffix("。")
            side = "prefix" if orig.startswith(head) else "suffix"
            assert side == "prefix" or orig.endswith(cut), r
            sides.add(side)
            assert _kept_units_ok(len(head), len(orig), 0.3, 0.7), r
    assert sides == {"prefix", "suffix"}


def _quantile(length: int, lengths: list[int]) -> tuple[float, float]:
    """The range of length quantiles a text of ``length`` can have among ``lengths`` (ties)."""
    arr = np.asarray(lengths)
    return float((arr < length).mean()), float((arr <= length).mean())


def _gap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, a[0] - b[1], b[0] - a[1])


def test_wrong_language_is_length_matched_never_own_source(noisy: list[dict], third: list[str]) -> None:
    rows = of_kind(noisy, "wrong_language")
    sources = [r["src"] for r in noisy]
    src_lengths = [len(s) for s in sources]
    tgt_lengths = [len(r["original_tgt"]) for r in noisy]
    third_lengths = [len(t) for t in third]
    from_source = [r for r in rows if r["tgt"] in set(sources)]
    from_third = [r for r in rows if r["tgt"] in set(third)]
    assert len(from_source) == len(from_third) == 15
    assert len({r["tgt"] for r in rows}) == len(rows)  # each candidate used once
    for r in rows:
        assert r["tgt"] != r["src"]
        collection = src_lengths if r in from_source else third_lengths
        q_tgt = _quantile(len(r["original_tgt"]), tgt_lengths)
        # 30 rows take candidates from 300 sources / 2000 third texts: the closest free one is near.
        assert _gap(_quantile(len(r["tgt"]), collection), q_tgt) < 0.05, r


def test_wrong_language_without_third_texts_uses_sources(pool: pa.Table) -> None:
    rows = corrupt_pairs(pool, 0.2, ["wrong_language"], seed=4).to_pylist()
    sources = {r["src"] for r in rows}
    assert all(r["tgt"] in sources and r["tgt"] != r["src"] for r in of_kind(rows, "wrong_language"))


def _partial_split_ok(ref: str, src: str, out: str) -> bool:
    """``out`` is the reference's first 40-70% of units, a space, the source's last 30-60%
    (more source units only when one fewer would have rebuilt the reference)."""
    t_spans, s_spans = unit_spans(ref), unit_spans(src)
    for k in range(1, len(t_spans)):
        head = ref[: t_spans[k - 1][1]] + " "
        for j in range(1, len(s_spans) + 1):
            if out != head + src[s_spans[-j][0] :] or not _kept_units_ok(k, len(t_spans), 0.4, 0.7):
                continue
            if _kept_units_ok(j, len(s_spans), 0.3, 0.6) or head + src[s_spans[-(j - 1)][0] :] == ref:
                return True
    return False


def test_partial_translation_is_reference_head_then_source_tail(noisy: list[dict]) -> None:
    rows = of_kind(noisy, "partial_translation")
    assert rows and all(_partial_split_ok(r["original_tgt"], r["src"], r["tgt"]) for r in rows)
    assert not _partial_split_ok("A b c d.", "W x y z.", "A b W x y z.")  # 50% head, 75% tail


def test_translator_called_once_with_only_the_picked_sources(pool: pa.Table) -> None:
    translator = RecordingTranslator()
    out = corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=5, weak_translator=translator).to_pylist()
    picked = of_kind(out, "low_quality_mt")
    assert len(translator.calls) == 1 and len(picked) == 15
    assert translator.calls[0] == [r["src"] for r in picked]
    assert all(r["tgt"] == "weak " + r["src"] for r in picked)
    # The same rows come out with hypotheses for the picked ids only.
    hyps = {r["id"]: r["tgt"] for r in picked}
    assert corrupt_pairs(pool, 0.3, NOISE_KINDS, seed=5, mt_hypotheses=hyps).to_pylist() == out
    unused = RecordingTranslator()
    corrupt_pairs(pool, 0.0, NOISE_KINDS, weak_translator=unused)
    assert unused.calls == []


def test_bad_arguments(pool: pa.Table) -> None:
    with pytest.raises(ValueError, match="unknown noise kinds"):
        corrupt_pairs(pool, 0.3, ["typo"])
    with pytest.raises(ValueError, match="needs mt_hypotheses .* or a weak_translator"):
        corrupt_pairs(pool, 0.3, ["low_quality_mt"])
    with pytest.raises(ValueError, match="exactly one"):
        corrupt_pairs(pool, 0.3, ["low_quality_mt"], mt_hypotheses={}, weak_translator=weak)
    with pytest.raises(ValueError, match="fraction"):
        corrupt_pairs(pool, 1.5)
    # The default kinds need no translation system.
    assert set(corrupt_pairs(pool, 0.3).column("noise").to_pylist()) == {"clean", *MODEL_FREE_KINDS}
    with pytest.raises(ValueError, match="repeat"):
        corrupt_pairs(pool, 0.3, ["truncated", "truncated"])
    with pytest.raises(ValueError, match="no noise kinds"):
        corrupt_pairs(pool, 0.3, [])
    with pytest.raises(ValueError, match="already corrupted"):
        corrupt_pairs(corrupt_pairs(pool, 0.1, ["truncated"]), 0.1, ["truncated"])


def test_empty_or_missing_weak_translation_names_the_pair(pool: pa.Table) -> None:
    def blank_second(sources: list[str]) -> list[str]:
        return ["ok"] + ["  "] + ["ok"] * (len(sources) - 2)

    first = corrupt_pairs(pool, 0.1, ["low_quality_mt"], weak_translator=weak).to_pylist()
    second_id = of_kind(first, "low_quality_mt")[1]["id"]
    with pytest.raises(ValueError, match=re.escape(repr(second_id))):
        corrupt_pairs(pool, 0.1, ["low_quality_mt"], weak_translator=blank_second)
    with pytest.raises(ValueError, match="pair '"):
        corrupt_pairs(pool, 0.1, ["low_quality_mt"], mt_hypotheses={})
    with pytest.raises(ValueError, match="returned 1 translations"):
        corrupt_pairs(pool, 0.1, ["low_quality_mt"], weak_translator=lambda s: ["one"])


def test_too_few_eligible_rows() -> None:
    table = pa.table({"id": ["a", "b"], "src": ["same", "x"], "tgt": ["same", "y"]})
    with pytest.raises(ValueError, match="only 1 pairs can take noise kind 'source_copy', 2 needed"):
        corrupt_pairs(table, 1.0, ["source_copy"])


# ------------------------------------------------------------------------------------------------
# The weak translator
# ------------------------------------------------------------------------------------------------


def test_few_shot_template() -> None:
    from gdig_core.evaluation.weak_mt import few_shot_template

    assert few_shot_template("de", "en") == (
        "German: Das Haus ist klein.\nEnglish: The house is small.\n\n"
        "German: Ich habe heute keine Zeit.\nEnglish: I have no time today.\n\n"
        "German: {src}\nEnglish:"
    )
    assert few_shot_template("en", "zh", shots=[("a {b}", "c")]) == "English: a {{b}}\nChinese: c\n\nEnglish: {src}\nChinese:"
    with pytest.raises(ValueError, match="no built-in example sentences"):
        few_shot_template("is", "en")
    with pytest.raises(ValueError, match="no language name"):
        few_shot_template("xx", "en")


def test_weak_translator_loads_once_and_uses_the_few_shot_prompt(tiny_model_dir: Path, monkeypatch) -> None:
    import gdig_core.evaluation.generation as generation
    import gdig_core.training.models as models
    from gdig_core.evaluation.weak_mt import few_shot_template, weak_translator

    loads, prompts = [], []
    real_load, real_generate = models.load_model, generation.generate_translations

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    def recording_generate(model, tokenizer, sources, src_lang, tgt_lang, cfg, **kwargs):
        prompts.append((cfg.prompt.template, cfg.model.add_bos, kwargs))
        return real_generate(model, tokenizer, sources, src_lang, tgt_lang, cfg, **kwargs)

    monkeypatch.setattr(models, "load_model", counting_load)
    monkeypatch.setattr(generation, "generate_translations", recording_generate)
    translate = weak_translator(ModelConfig(name="tiny", device="cpu"), "de", "en", max_new_tokens=6, path=tiny_model_dir)
    assert not loads  # lazily, on the first call
    first = translate(["Das ist gut.", "Wir kommen morgen."])
    second = translate(["Heute nicht."])
    assert len(loads) == 1 and len(first) == 2 and len(second) == 1
    assert all(isinstance(t, str) and "\n" not in t for t in first + second)
    assert prompts[0][0] == few_shot_template("de", "en") and prompts[0][1] is True
    assert prompts[0][2]["num_beams"] == 1 and prompts[0][2]["max_new_tokens"] == 6
    assert translate([]) == []


@pytest.mark.slow
def test_gemma_weak_translations_are_english_text() -> None:
    from gdig_core.evaluation.weak_mt import weak_translator
    from gdig_core.filters.rules import language_id_score
    from gdig_core.training.models import GEMMA_ALIAS

    # The test suite's Gemma cache, as in test_models.
    cache = os.environ.get("GDIG_CACHE", str(PROJECT_ROOT / ".cache" / "gdig"))
    cfg = ModelConfig(name=GEMMA_ALIAS, cache_dir=cache, device="cpu")
    sources = ["Der Zug kommt heute später an.", "Die Stadt baut eine neue Schule."]
    out = weak_translator(cfg, "de", "en", max_new_tokens=24)(sources)
    assert len(out) == 2 and all(t.strip() and t != "Text:" for t in out)
    assert (language_id_score(out, "en") > 0.5).all(), out


# ------------------------------------------------------------------------------------------------
# The CLI
# ------------------------------------------------------------------------------------------------


def _write_pool(path: Path, table: pa.Table) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()), encoding="utf-8")


def test_cli_output_keeps_labels_through_prepare_data(tmp_path: Path, data_dir: Path, pool: pa.Table) -> None:
    from gdig_cli.main import main

    noisy = tmp_path / "noisy.jsonl"
    src = data_dir / "de-en" / "pool.wmt17-20.jsonl"
    assert main(["data", "corrupt", str(src), str(noisy), "--fraction", "0.3", "--seed", "2"]) == 0
    rows = [json.loads(x) for x in noisy.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 12000 and {r["noise"] for r in rows} == {"clean", *MODEL_FREE_KINDS}
    cfg = DataConfig(
        data_dir=str(data_dir), pool=DatasetSpec(path=str(noisy), sample=500), seed=DatasetSpec(path="de-en/flores.dev.tsv", sample=8)
    )
    summary = prepare_data(cfg, tmp_path / "out")
    labels = pq.read_table(tmp_path / "out" / "noise_labels.parquet").to_pylist()
    assert len(labels) == summary["pool"]["rows_kept"] == 500
    assert sum(summary["pool"]["noise_labels"].values()) == 500

    # All six kinds, low_quality_mt from a hypotheses file.
    small = tmp_path / "small.jsonl"
    _write_pool(small, pool)
    hyps = tmp_path / "hyps.jsonl"
    hyps.write_text("".join(json.dumps({"id": r["id"], "hyp": "weak " + r["src"]}) + "\n" for r in pool.to_pylist()) + "\n")
    out = tmp_path / "all.jsonl"
    assert main(["data", "corrupt", str(small), str(out), "--kinds", "all", "--mt-hypotheses", str(hyps)]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert {r["noise"] for r in rows} == {"clean", *NOISE_KINDS}
    assert all(r["tgt"] == "weak " + r["src"] for r in of_kind(rows, "low_quality_mt"))


def test_cli_weak_mt_translates_the_picked_rows(tmp_path: Path, pool: pa.Table, tiny_model_dir: Path, monkeypatch) -> None:
    import gdig_core.evaluation.weak_mt as weak_mt
    from gdig_cli.main import main

    seen: list[list[str]] = []

    def fake_weak_translator(model_cfg, src_lang, tgt_lang, **kwargs):
        assert model_cfg.name == str(tiny_model_dir) and (src_lang, tgt_lang) == ("de", "en")

        def translate(sources):
            seen.append(list(sources))
            return weak(sources)

        return translate

    monkeypatch.setattr(weak_mt, "weak_translator", fake_weak_translator)
    small, out = tmp_path / "small.jsonl", tmp_path / "out.jsonl"
    _write_pool(small, pool)
    argv = ["data", "corrupt", str(small), str(out), "--kinds", "truncated,low_quality_mt", "--weak-mt", str(tiny_model_dir)]
    assert main(argv) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert seen == [[r["src"] for r in of_kind(rows, "low_quality_mt")]] and len(seen[0]) == 45


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kinds", ","], "--kinds: no noise kind"),
        (["--kinds", "truncated,typo"], "unknown noise kind(s) typo"),
        (["--kinds", "all"], "needs --mt-hypotheses FILE or --weak-mt MODEL"),
        (["--weak-mt", "gemma-3-270m"], "which --kinds does not include"),
        (["--fraction", "2"], "--fraction must be in [0, 1]"),
        (["--kinds", "all", "--weak-mt", "./no-such-model"], "--weak-mt: no checkpoint directory ./no-such-model"),
        (["--kinds", "all", "--weak-mt", "tiny"], "data corrupt: model 'tiny' must be built"),
    ],
)
def test_cli_bad_options_are_clear_errors(tmp_path: Path, pool: pa.Table, capsys, extra: list[str], message: str) -> None:
    from gdig_cli.main import main

    small = tmp_path / "small.jsonl"
    _write_pool(small, pool)
    assert main(["data", "corrupt", str(small), str(tmp_path / "out.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdig: error:") and message in err
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_broken_hypotheses_file_names_its_line(tmp_path: Path, pool: pa.Table, capsys) -> None:
    from gdig_cli.main import main

    small = tmp_path / "small.jsonl"
    _write_pool(small, pool)
    first = pool.column("id").to_pylist()[0]
    cases = {
        json.dumps({"id": first, "hyp": "ok"}) + '\n{"id": "x", "hyp": \n': "line 2: broken JSON",
        json.dumps({"id": first}) + "\n": "line 1: field 'hyp'",
        '{"id": "a", "hyp": "1"}\n{"id": "a", "hyp": "2"}\n': "line 2: field 'id': repeated id",
        '{"id": "a", "hyp": "1"}\n': "no weak translation (missing or empty) for pair",
    }
    for text, message in cases.items():
        hyps = tmp_path / "hyps.jsonl"
        hyps.write_text(text, encoding="utf-8")
        argv = ["data", "corrupt", str(small), str(tmp_path / "o.jsonl"), "--kinds", "low_quality_mt", "--mt-hypotheses", str(hyps)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err, text
