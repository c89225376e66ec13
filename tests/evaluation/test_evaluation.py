"""Generation (stopping, prompt stripping, left padding), metrics (equal to sacrebleu's command
line), COMET skip, test-set loading and end-to-end evaluation files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
import torch
from paths import DATA_DIR

from gdig_core.config import GdigConfig
from gdig_core.config import TestSetSpec as SetSpec  # (pytest would try to collect "Test*")
from gdig_core.evaluation.evaluate import (
    evaluate_files,
    evaluate_model,
    load_test_set,
    read_lines,
    score_files,
    standard_test_sets,
)
from gdig_core.evaluation.generation import EndOfLineCriteria, cut_translation, generate_translations
from gdig_core.evaluation.metrics import (
    bleu_tokenizer,
    check_comet_model,
    comet_available,
    comet_score,
    corpus_metrics,
)

SACREBLEU = Path(sys.executable).parent / "sacrebleu"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_rows() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in read_lines(DATA_DIR / "de-en/pool.wmt17-20.jsonl")[:300]]
    return [r for r in rows if len(r["src"]) < 100][:30]


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model after a few seconds of training: it emits real (if poor) English, so
    comparisons of generated text are not trivially between empty strings."""
    import pyarrow as pa

    from gdig_core.config import TrainConfig
    from gdig_core.training.finetune import finetune

    torch.set_num_threads(1)
    train = TrainConfig(max_steps=80, learning_rate=1e-2, batch_size=10)
    return finetune(_cfg(), train, pa.Table.from_pylist(_train_rows()), tmp_path_factory.mktemp("trained") / "m",
                    base_model=tiny_model_dir, progress=False)


def _cfg(**evaluation: Any) -> GdigConfig:
    cfg = GdigConfig()
    cfg.data.data_dir = str(DATA_DIR)
    cfg.model.device = "cpu"
    cfg.prompt.max_length = 128
    for key, value in evaluation.items():
        setattr(cfg.evaluation, key, value)
    return cfg


def _perturb(line: str, i: int) -> str:
    """A plausible system output: drop every third word (or character, for Chinese)."""
    if " " in line:
        words = line.split()
        return " ".join(w for j, w in enumerate(words) if (j + i) % 3)
    return "".join(c for j, c in enumerate(line) if (j + i) % 3)


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref_file", "lang", "tokenize"),
    [("de-en/flores.devtest.en", "en", "13a"), ("zh-en/flores.devtest.zh", "zh", "zh")],
)
def test_metrics_equal_sacrebleu_command_line(tmp_path: Path, ref_file: str, lang: str, tokenize: str) -> None:
    refs = read_lines(DATA_DIR / ref_file)[:300]
    hyps = [_perturb(r, i) for i, r in enumerate(refs)]
    ref_path, hyp_path = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref_path.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hyp_path.write_text("\n".join(hyps) + "\n", encoding="utf-8")

    ours = score_files(hyp_path, ref_path, lang)
    cli = subprocess.run(
        [str(SACREBLEU), str(ref_path), "-i", str(hyp_path), "-m", "bleu", "chrf", "--tokenize", tokenize,
         "-f", "json", "-w", "6"],
        check=True, capture_output=True, text=True,
    )
    bleu_cli, chrf_cli = json.loads(cli.stdout)
    assert ours["tokenize"] == tokenize
    assert ours["bleu"] == pytest.approx(bleu_cli["score"], abs=1e-5)
    assert ours["chrf"] == pytest.approx(chrf_cli["score"], abs=1e-5)
    assert ours["signatures"]["bleu"] == bleu_cli["signature"]
    assert ours["signatures"]["chrf"] == chrf_cli["signature"]
    assert 10 < ours["bleu"] < 90  # a real, non-degenerate comparison

    per = ours["per_sentence"]
    assert len(per["bleu"]) == len(per["chrf"]) == len(refs)
    for i in (0, 7, 123):
        expected = sacrebleu.sentence_bleu(hyps[i], [refs[i]], tokenize=tokenize).score
        assert per["bleu"][i] == pytest.approx(expected)
        assert per["chrf"][i] == pytest.approx(sacrebleu.sentence_chrf(hyps[i], [refs[i]]).score)


def test_bleu_tokenizer_per_target_language() -> None:
    assert bleu_tokenizer("en") == ("13a", None)
    assert bleu_tokenizer("de") == ("13a", None)
    assert bleu_tokenizer("zh") == ("zh", None)
    name, note = bleu_tokenizer("ja")
    try:
        import MeCab  # noqa: F401

        assert (name, note) == ("ja-mecab", None)
    except ImportError:
        assert name == "char" and "ja-mecab" in note and "sacrebleu[ja]" in note


def test_metrics_reject_misaligned_input() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_metrics(["a", "b"], ["a"], "en")


# ------------------------------------------------------------------------------------------
# COMET
# ------------------------------------------------------------------------------------------


def test_comet_not_configured_is_a_clear_skip() -> None:
    result = comet_score(["Hallo"], ["Hello"], ["Hello"], None)
    assert result["comet"] is None
    assert "evaluation.comet_model is not set" in result["note"]


@pytest.mark.skipif(comet_available(), reason="unbabel-comet is installed here")
def test_comet_package_missing_is_a_clear_skip(tmp_path: Path) -> None:
    ckpt = tmp_path / "wmt22-comet-da"
    ckpt.mkdir()
    result = comet_score(["Hallo"], ["Hello"], ["Hello"], str(ckpt))
    assert result["comet"] is None and "per_sentence" not in result
    assert "unbabel-comet is not installed" in result["note"] and "gdig[comet]" in result["note"]


def test_comet_mistyped_path_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluation.comet_model"):
        check_comet_model(str(tmp_path / "nope"))
    cfg = _cfg(comet_model=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        evaluate_model(cfg, tmp_path / "no-model-needed", tmp_path / "out")


def test_comet_plumbing_with_a_stand_in_package(tmp_path: Path, trained_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With unbabel-comet importable (here a stand-in module), COMET scores reach metrics.json,
    results and sentences.jsonl, and the model is loaded from ``<dir>/checkpoints/model.ckpt``."""
    import types

    loaded: list[str] = []

    class Scorer:
        def predict(self, data, batch_size, gpus, progress_bar):  # noqa: ANN001
            scores = [0.5 + 0.01 * i for i in range(len(data))]
            return types.SimpleNamespace(system_score=sum(scores) / len(scores), scores=scores)

    def load_from_checkpoint(path: str) -> Scorer:
        loaded.append(path)
        return Scorer()

    monkeypatch.setitem(sys.modules, "comet", types.SimpleNamespace(load_from_checkpoint=load_from_checkpoint))
    ckpt = tmp_path / "wmt22-comet-da"
    ckpt.mkdir()
    cfg = _cfg(max_sentences=3, max_new_tokens=4, comet_model=str(ckpt))
    results = evaluate_model(cfg, trained_model_dir, tmp_path / "eval")
    assert loaded == [str(ckpt / "checkpoints" / "model.ckpt")]  # one load for both test sets
    for name, m in results["test_sets"].items():
        assert m["comet"] == pytest.approx(0.51) and m["comet_model"] == str(ckpt)
        assert not any("COMET" in n for n in m["notes"])
        sentences = [json.loads(line) for line in read_lines(tmp_path / "eval" / name / "sentences.jsonl")]
        assert [s["comet"] for s in sentences] == pytest.approx([0.5, 0.51, 0.52])


# ------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------


def test_cut_translation() -> None:
    assert cut_translation("Hello world.\nText:\n\"more\"") == "Hello world."
    assert cut_translation("\n\n  Hello  \n") == "Hello"
    assert cut_translation("no newline at all ") == "no newline at all"
    assert cut_translation("") == ""
    assert cut_translation("Carriage\rreturn") == "Carriage"
    assert cut_translation("keeps\u2028unicode separators") == "keeps\u2028unicode separators"


def test_end_of_line_criteria(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    hello = tok("Hello world", add_special_tokens=False)["input_ids"]
    prompt = [5, 6, 7]
    crit = EndOfLineCriteria(tok, prompt_len=len(prompt))

    def done(*parts: list[int]) -> bool:
        ids = torch.tensor([prompt + [t for p in parts for t in p]])
        return bool(crit(ids, None)[0])

    assert not done()
    assert not done(nl), "a leading newline does not end the translation"
    assert not done(nl, hello)
    assert done(nl, hello, nl)
    assert done(hello, nl)
    # Batched and per row: one finished row, one not.
    rows = torch.tensor([prompt + hello + nl, prompt + nl + hello])
    assert crit(rows, None).tolist() == [True, False]


class ScriptedLM(torch.nn.Module):
    """Stands in for a causal LM: ``generate`` emits a scripted continuation per prompt, one token
    per step, applying the stopping criteria like Hugging Face does; records what it was given."""

    def __init__(self, tokenizer: Any, scripts: dict[str, str]):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.scripts = scripts
        self.generation_config = type("GC", (), {"eos_token_id": tokenizer.eos_token_id})()
        self.calls: list[dict[str, Any]] = []
        self.steps: dict[str, int] = {}

    def generate(self, input_ids, attention_mask, max_new_tokens, stopping_criteria, eos_token_id,
                 pad_token_id, **kwargs):
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone()})
        prompts = [self.tok.decode(row[mask.bool()], skip_special_tokens=True)
                   for row, mask in zip(input_ids, attention_mask, strict=True)]
        plans = []
        for prompt in prompts:
            key = next(k for k in self.scripts if k in prompt)
            plans.append((key, self.tok(self.scripts[key], add_special_tokens=False)["input_ids"] + [eos_token_id[0]]))
        seqs = input_ids
        finished = torch.zeros(len(plans), dtype=torch.bool)
        for step in range(max_new_tokens):
            nxt = torch.tensor([p[step] if step < len(p) and not f else pad_token_id
                                for (_, p), f in zip(plans, finished, strict=True)])
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            for i, (key, _) in enumerate(plans):
                if not finished[i]:
                    self.steps[key] = step + 1
            finished |= stopping_criteria(seqs, None) | torch.isin(nxt, torch.tensor(eos_token_id))
            if finished.all():
                break
        return seqs


def test_generation_strips_prompt_stops_at_newline_and_keeps_order(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = _cfg(batch_size=2, max_new_tokens=30)
    scripts = {
        "Guten Morgen": "Good morning.\nText:\n\"Guten Morgen\"",  # keeps going past the line: cut
        "Ein sehr viel längerer Satz, der zuerst kommt": "\nA much longer sentence.",  # leading newline
        "Danke": "Thanks",  # ends with EOS
    }
    model = ScriptedLM(tok, scripts)
    sources = ["Guten Morgen", "Ein sehr viel längerer Satz, der zuerst kommt", "Danke"]
    out = generate_translations(model, tok, sources, "de", "en", cfg)
    assert out == ["Good morning.", "A much longer sentence.", "Thanks"]
    # Stopped right after the newline token that ends the line, not at max_new_tokens.
    good = tok("Good morning.\n", add_special_tokens=False)["input_ids"]
    assert model.steps["Guten Morgen"] <= len(good) + 1
    # Left padding with a matching mask; the BOS token starts every prompt.
    for call in model.calls:
        ids, mask = call["input_ids"], call["attention_mask"]
        for row, m in zip(ids, mask, strict=True):
            n_pad = int((m == 0).sum())
            assert m[n_pad:].all() and (row[:n_pad] == tok.pad_token_id).all()
            assert int(row[n_pad]) == tok.bos_token_id
    assert model.calls[0]["attention_mask"].shape[0] == 2  # batch_size


@pytest.mark.parametrize("beams", [1, 2])
def test_batched_generation_equals_one_by_one(trained_model_dir: Path, beams: int) -> None:
    from gdig_core.training.models import load_model

    cfg = _cfg(max_new_tokens=12, num_beams=beams)
    model, tok = load_model(cfg.model, path=trained_model_dir)
    sources = [r["src"] for r in _train_rows()[:8]]
    batched = generate_translations(model, tok, sources, "de", "en", cfg, batch_size=8)
    single = [generate_translations(model, tok, [s], "de", "en", cfg, batch_size=1)[0] for s in sources]
    assert batched == single
    assert all("\n" not in h for h in batched)
    assert len(set(batched)) >= 4 and sum(len(h.split()) >= 2 for h in batched) >= 4, batched  # real text, not empty strings


# ------------------------------------------------------------------------------------------
# Test sets and end-to-end evaluation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "name", "lines"),
    [("de-en", "flores", 1012), ("de-en", "wmt22", 1984), ("zh-en", "flores", 1012), ("zh-en", "wmt22", 1875)],
)
def test_test_sets_load_whole(pair: str, name: str, lines: int) -> None:
    src = pair.split("-")[0]
    stem = "flores.devtest" if name == "flores" else "wmt22"
    spec = SetSpec(name=name, path=f"{pair}/{stem}.{src}", tgt_path=f"{pair}/{stem}.en", format="parallel",
                       src_lang=src, tgt_lang="en")
    test = load_test_set(_cfg(), spec)
    assert len(test.sources) == len(test.references) == lines  # duplicates are kept: every line counts
    assert test.src_lang == src and test.tgt_lang == "en"
    assert test.references[0] == read_lines(DATA_DIR / f"{pair}/{stem}.en")[0]


def test_standard_test_sets_both_directions() -> None:
    cfg = _cfg()
    zh_en = {s.name: s for s in standard_test_sets("zh", "en")}
    assert zh_en["wmt22"].path == "zh-en/wmt22.zh" and zh_en["wmt22"].tgt_path == "zh-en/wmt22.en"
    en_zh = load_test_set(cfg, standard_test_sets("en", "zh")[0])
    zh = load_test_set(cfg, zh_en["flores"])
    assert en_zh.sources == zh.references and en_zh.references == zh.sources and en_zh.tgt_lang == "zh"
    files = [(s.name, s.path, s.tgt_path) for s in standard_test_sets("de", "en")]
    assert files == [(s.name, s.path, s.tgt_path) for s in GdigConfig().evaluation.test_sets]
    with pytest.raises(ValueError, match="no standard test sets"):
        standard_test_sets("de", "zh")


def test_evaluate_model_writes_aligned_files(tmp_path: Path, trained_model_dir: Path) -> None:
    cfg = _cfg(max_sentences=5, batch_size=5, max_new_tokens=6)
    results = evaluate_model(cfg, trained_model_dir, tmp_path / "eval")
    assert set(results["test_sets"]) == {"flores", "wmt22"}
    for name, m in results["test_sets"].items():
        d = tmp_path / "eval" / name
        src, hyp, ref = (read_lines(d / f) for f in ("source.de", "hypotheses.en", "reference.en"))
        assert len(src) == len(hyp) == len(ref) == 5
        assert m["n_sentences"] == 5 and m["tokenize"] == "13a"
        assert m["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert m["comet"] is None and any("COMET skipped" in n for n in m["notes"])
        assert m["bleu"] == pytest.approx(score_files(d / "hypotheses.en", d / "reference.en", "en")["bleu"])
        sentences = [json.loads(line) for line in read_lines(d / "sentences.jsonl")]
        assert [s["hyp"] for s in sentences] == hyp
        assert json.loads((d / "metrics.json").read_text())["bleu"] == m["bleu"]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["generation"]["decoding"] == "greedy" and saved["test_sets"]["flores"]["bleu"] == results["test_sets"]["flores"]["bleu"]


def test_evaluate_own_file_pair_and_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    from gdig_cli.train_cmds import add_parser

    src, ref = tmp_path / "mine.de", tmp_path / "mine.en"
    src.write_text("Guten Morgen.\nDanke schön.\nWie geht es dir?\n", encoding="utf-8")
    ref.write_text("Good morning.\nThank you.\nHow are you?\n", encoding="utf-8")
    cfg = _cfg(max_new_tokens=5)
    results = evaluate_files(cfg, tiny_model_dir, src, ref, tmp_path / "own", name="mine")
    assert list(results["test_sets"]) == ["mine"]
    assert len(read_lines(tmp_path / "own" / "mine" / "hypotheses.en")) == 3

    import argparse

    parser = argparse.ArgumentParser(prog="gdig")
    add_parser(parser.add_subparsers(dest="command", required=True))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{data_dir: {DATA_DIR}}}\nmodel: {{device: cpu}}\n"
                      "evaluation: {max_new_tokens: 5, max_sentences: 3}\n", encoding="utf-8")
    args = parser.parse_args(["evaluate", str(config), "--model", str(tiny_model_dir), "--src", str(src),
                              "--ref", str(ref), "--out", str(tmp_path / "cli"), "--no-progress"])
    assert args.func(args) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["test_sets"]["custom"]["bleu"] == pytest.approx(results["test_sets"]["mine"]["bleu"])
    args = parser.parse_args(["evaluate", str(config), "--model", str(tiny_model_dir), "--test-set", "wmt22",
                              "--out", str(tmp_path / "cli2"), "--no-progress", "--json"])
    assert args.func(args) == 0
    assert len(read_lines(tmp_path / "cli2" / "wmt22" / "hypotheses.en")) == 3


def test_reference_nll_equals_the_models_own_loss(trained_model_dir: Path) -> None:
    """ref_nll pools the teacher-forced target-token NLL; compared with HF's own loss per sentence."""
    from gdig_core.data.encoding import collate, encode_pairs
    from gdig_core.evaluation.evaluate import EvalSet, reference_nll
    from gdig_core.training.models import load_model

    cfg = _cfg(batch_size=3)
    model, tok = load_model(cfg.model, path=trained_model_dir)
    rows = _train_rows()[:5]
    test = EvalSet("t", "de", "en", [r["src"] for r in rows], [r["tgt"] for r in rows])
    got = reference_nll(model, tok, test, cfg)
    total = tokens = 0.0
    for r in rows:
        (enc,) = encode_pairs(tok, [{**r, "id": "x"}], cfg)
        with torch.no_grad():
            out = model(**collate([enc], tok.pad_token_id))
        n = enc.n_target_tokens
        total += float(out.loss) * n
        tokens += n
    assert got["ref_nll_tokens"] == tokens
    assert got["ref_nll"] == pytest.approx(total / tokens, rel=1e-4)


def test_reference_nll_batches_shrink_to_the_logits_budget(
    trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large vocabulary's logits would not fit at the generation batch size: the teacher-forced
    batches shrink to the byte budget (here one row) and the NLL stays the same."""
    from gdig_core.data.encoding import encode_pairs
    from gdig_core.evaluation import evaluate as evaluation
    from gdig_core.training import nll
    from gdig_core.training.models import load_model

    cfg = _cfg(batch_size=4)
    model, tok = load_model(cfg.model, path=trained_model_dir)
    rows = _train_rows()[:5]
    test = evaluation.EvalSet("t", "de", "en", [r["src"] for r in rows], [r["tgt"] for r in rows])
    whole = evaluation.reference_nll(model, tok, test, cfg)
    encoded = encode_pairs(tok, [{**r, "id": str(i)} for i, r in enumerate(rows)], cfg)
    assert nll.nll_batch_size(model, encoded, 4) == 4
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(nll, "NLL_LOGITS_BYTES", 4 * vocab * max(len(e.input_ids) for e in encoded))
    assert nll.nll_batch_size(model, encoded, 4) == 1
    one_row = evaluation.reference_nll(model, tok, test, cfg)
    assert one_row["ref_nll_tokens"] == whole["ref_nll_tokens"]
    assert one_row["ref_nll"] == pytest.approx(whole["ref_nll"], rel=1e-5)


def test_per_set_max_sentences_and_nll_in_results(tmp_path: Path, trained_model_dir: Path) -> None:
    cfg = _cfg(batch_size=4, max_new_tokens=6)
    cfg.evaluation.test_sets[0].max_sentences = 3
    cfg.evaluation.test_sets[1].max_sentences = 2
    results = evaluate_model(cfg, trained_model_dir, tmp_path / "eval")
    assert results["test_sets"]["flores"]["n_sentences"] == 3 and results["test_sets"]["wmt22"]["n_sentences"] == 2
    assert 0 < results["test_sets"]["flores"]["ref_nll"] < 20


def test_each_batch_is_capped_by_its_sources_length(tiny_model_dir: Path) -> None:
    """A model that never stops decodes at most ratio x source tokens + 8, not max_new_tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = _cfg(batch_size=1, max_new_tokens=100, max_new_tokens_ratio=1.0)
    model = ScriptedLM(tok, {"Hallo": "word " * 200})
    generate_translations(model, tok, ["Hallo"], "de", "en", cfg)
    n_src = len(tok("Hallo", add_special_tokens=False)["input_ids"])
    assert model.steps["Hallo"] <= n_src + 8 + 1
