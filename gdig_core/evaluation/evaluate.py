"""Evaluate a model on test sets: translate, write hypotheses, score BLEU/chrF (and COMET).

Test sets come from ``cfg.evaluation.test_sets`` (FLORES devtest and WMT22 by default, read from
the data directory) or from any file pair a user has (:func:`evaluate_files`). For each test set
``<out_dir>/<name>/`` receives, line-aligned::

    source.<src>       the sources, one per line
    hypotheses.<tgt>   the model's translations, one per line
    reference.<tgt>    the references, one per line
    sentences.jsonl    per sentence: src, hyp, ref, sentence BLEU and chrF (and COMET)
    metrics.json       corpus BLEU/chrF with sacrebleu signatures, COMET or the reason it is absent

and ``<out_dir>/results.json`` collects the corpus scores of every test set.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gdig_core.config import GdigConfig, TestSetSpec
from gdig_core.evaluation.generation import generate_translations
from gdig_core.evaluation.metrics import check_comet_model, comet_scores, corpus_metrics
from gdig_core.io import atomic_path, atomic_write_json, atomic_write_text
from gdig_core.names import check_safe_name, inside

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str
    src_lang: str
    tgt_lang: str
    sources: list[str]
    references: list[str]


#: Offline test sets in the data directory: name -> file stem; language -> folder (paired with English).
_STANDARD_SETS = {"flores": "flores.devtest", "wmt22": "wmt22"}
_STANDARD_PAIRS = {"de": "de-en", "zh": "zh-en"}


def standard_test_sets(src_lang: str, tgt_lang: str) -> list[TestSetSpec]:
    """FLORES devtest and WMT22 for ``src_lang -> tgt_lang`` from the data directory, for de/zh
    with English in either direction (X->en uses the files as published; en->X swaps the sides).
    Put them in ``evaluation.test_sets`` (the default there is de->en)."""
    other = tgt_lang if src_lang == "en" else src_lang
    if "en" not in (src_lang, tgt_lang) or other not in _STANDARD_PAIRS:
        raise ValueError(f"no standard test sets for {src_lang}->{tgt_lang} (have de<->en, zh<->en)")
    folder = _STANDARD_PAIRS[other]
    return [
        TestSetSpec(name=name, path=f"{folder}/{stem}.{src_lang}", tgt_path=f"{folder}/{stem}.{tgt_lang}",
                    format="parallel", src_lang=src_lang, tgt_lang=tgt_lang)
        for name, stem in _STANDARD_SETS.items()
    ]


def load_test_set(cfg: GdigConfig, spec: TestSetSpec, whole: bool = False) -> EvalSet:
    """Read a test set with the data layer (every line kept, no dedup), cut to the first N lines
    when the set's ``max_sentences`` (or else ``evaluation.max_sentences``) is set, unless ``whole``."""
    from gdig_core.data.readers import read_dataset

    table = read_dataset(spec, cfg.data, "test", cfg.prompt.language_names).table
    limit = None if whole else spec.max_sentences or cfg.evaluation.max_sentences
    if limit is not None and table.num_rows > limit:
        table = table.slice(0, limit)
    src_langs = set(table.column("src_lang").to_pylist())
    tgt_langs = set(table.column("tgt_lang").to_pylist())
    if len(src_langs) != 1 or len(tgt_langs) != 1:
        raise ValueError(f"test set {spec.name!r} mixes language pairs: {sorted(src_langs)} -> {sorted(tgt_langs)}")
    src_lang, tgt_lang = src_langs.pop(), tgt_langs.pop()
    if (src_lang, tgt_lang) != (cfg.data.src_lang, cfg.data.tgt_lang):
        # Legitimate (e.g. cross-direction checks) but usually a forgotten evaluation.test_sets.
        log.warning("test set %r is %s->%s but data is %s->%s; see evaluation.standard_test_sets",
                    spec.name, src_lang, tgt_lang, cfg.data.src_lang, cfg.data.tgt_lang)
    return EvalSet(
        name=spec.name,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        sources=table.column("src").to_pylist(),
        references=table.column("tgt").to_pylist(),
    )


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Write one string per line, atomically; a string may not contain a newline."""
    for i, line in enumerate(lines):
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path}: line {i + 1} contains a newline; cannot write it line-aligned")
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends (``\\n`` or ``\\r\\n``; other Unicode
    separators such as U+2028 stay inside a line, as in the data readers)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def score_test_set(test: EvalSet, hyps: Sequence[str], out_dir: str | Path) -> dict[str, Any]:
    """Write the line-aligned files and metrics of one test set; return its corpus metrics."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_lines(d / f"source.{test.src_lang}", test.sources)
    write_lines(d / f"hypotheses.{test.tgt_lang}", hyps)
    write_lines(d / f"reference.{test.tgt_lang}", test.references)
    metrics = corpus_metrics(hyps, test.references, test.tgt_lang)
    per = metrics.pop("per_sentence")
    with atomic_path(d / "sentences.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i, (s, h, r) in enumerate(zip(test.sources, hyps, test.references, strict=True)):
            rec = {"line": i + 1, "src": s, "hyp": h, "ref": r, "bleu": per["bleu"][i], "chrf": per["chrf"][i]}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    metrics.update(name=test.name, src_lang=test.src_lang, tgt_lang=test.tgt_lang)
    return metrics


def _add_comet(results: dict[str, dict[str, Any]], tests: list[EvalSet], hyps: dict[str, list[str]],
               cfg: GdigConfig, out_dir: Path) -> None:
    """COMET for every test set (one model load), or the skip note; rewrites sentences.jsonl."""
    scored = comet_scores(
        [(t.sources, hyps[t.name], t.references) for t in tests],
        cfg.evaluation.comet_model,
        batch_size=cfg.evaluation.batch_size,
    )
    for test, comet in zip(tests, scored, strict=True):
        per = comet.pop("per_sentence", None)
        results[test.name].update(comet=comet["comet"], comet_model=comet["comet_model"])
        if comet["note"]:
            results[test.name]["notes"].append(comet["note"])
        if per is not None:
            path = out_dir / test.name / "sentences.jsonl"
            recs = [json.loads(line) for line in read_lines(path)]
            for rec, value in zip(recs, per, strict=True):
                rec["comet"] = value
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


def reference_nll(model: Any, tokenizer: Any, test: EvalSet, cfg: GdigConfig) -> dict[str, Any]:
    """Mean NLL per reference token given the prompt (teacher forcing, the training loss):
    ``ref_nll`` pools all tokens, ``ref_nll_sentence`` averages the per-sentence means."""
    from gdig_core.training.nll import target_nll

    rows = [{"id": str(i), "src_lang": test.src_lang, "tgt_lang": test.tgt_lang, "src": s, "tgt": r}
            for i, (s, r) in enumerate(zip(test.sources, test.references, strict=True))]
    t0 = time.perf_counter()
    loss, n_tok = target_nll(model, tokenizer, rows, cfg, cfg.evaluation.batch_size)
    total, tokens = float(loss.sum()), int(n_tok.sum())
    per_sentence = (loss / np.maximum(n_tok, 1)).tolist()
    return {
        "ref_nll": total / max(tokens, 1),
        "ref_nll_sentence": sum(per_sentence) / max(len(per_sentence), 1),
        "ref_nll_tokens": tokens,
        "ref_nll_seconds": time.perf_counter() - t0,
    }


def translate_and_score(
    cfg: GdigConfig, model: Any, tokenizer: Any, tests: list[EvalSet], out_dir: str | Path, progress: bool = False,
    nll_tests: dict[str, EvalSet] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Translate every test set with a loaded model and write its files; return the corpus
    metrics and the hypotheses per test set (COMET not yet added). ``nll_tests`` (by name): the
    sentences the reference NLL is taken on where they differ from the translated ones."""
    out = Path(out_dir)
    results: dict[str, dict[str, Any]] = {}
    hyps: dict[str, list[str]] = {}
    for test in tests:
        t0 = time.perf_counter()
        hyps[test.name] = generate_translations(
            model, tokenizer, test.sources, test.src_lang, test.tgt_lang, cfg, progress=progress
        )
        seconds = time.perf_counter() - t0
        metrics = score_test_set(test, hyps[test.name], inside(out, test.name))
        metrics.update(generation_seconds=seconds, sentences_per_s=len(test.sources) / max(seconds, 1e-9))
        if cfg.evaluation.reference_nll:
            on = (nll_tests or {}).get(test.name, test)
            metrics.update(reference_nll(model, tokenizer, on, cfg), ref_nll_sentences=len(on.sources))
        results[test.name] = metrics
        log.info("%s: BLEU %.2f chrF %.2f (%d sentences, %.1f s)", test.name, metrics["bleu"],
                 metrics["chrf"], len(test.sources), seconds)
    return results, hyps


def finish_results(
    cfg: GdigConfig,
    results: dict[str, dict[str, Any]],
    tests: list[EvalSet],
    hyps: dict[str, list[str]],
    out_dir: str | Path,
    model_label: str,
) -> dict[str, Any]:
    """Add COMET (or its skip note), write each ``metrics.json`` and ``results.json``."""
    out = Path(out_dir)
    ev = cfg.evaluation
    _add_comet(results, tests, hyps, cfg, out)
    for test in tests:
        atomic_write_json(out / test.name / "metrics.json", results[test.name])
    summary = {
        "model": model_label,
        "generation": {
            "batch_size": ev.batch_size,
            "max_new_tokens": ev.max_new_tokens,
            "num_beams": ev.num_beams,
            "bf16": ev.bf16,
            "decoding": "greedy" if ev.num_beams == 1 else f"beam{ev.num_beams}",
            "prompt_template": cfg.prompt.template,
            "stop": "EOS, or the first newline after the translation starts",
        },
        "test_sets": results,
    }
    atomic_write_json(out / "results.json", summary)
    return summary


def evaluate_model(
    cfg: GdigConfig,
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    test_sets: list[TestSetSpec] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the checkpoint ``model_dir`` (None: ``cfg.model`` itself, i.e. zero-shot) on
    ``test_sets`` (default ``cfg.evaluation.test_sets``); write per-test-set files and
    ``results.json`` into ``out_dir`` and return the results (corpus scores, no per-sentence lists).
    """
    from gdig_core.training.models import load_model

    check_comet_model(cfg.evaluation.comet_model)  # a mistyped COMET path fails before generating
    specs = test_sets if test_sets is not None else cfg.evaluation.test_sets
    if not specs:
        raise ValueError("no test sets to evaluate (evaluation.test_sets is empty)")
    names = [check_safe_name(s.name, "test set name") for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"test set names must be unique: {names}")
    tests = [load_test_set(cfg, spec) for spec in specs]
    nll_tests = None
    if cfg.evaluation.reference_nll and cfg.evaluation.reference_nll_sentences == "all":
        nll_tests = {spec.name: load_test_set(cfg, spec, whole=True) for spec in specs}
    model, tokenizer = load_model(cfg.model, path=model_dir)
    results, hyps = translate_and_score(cfg, model, tokenizer, tests, out_dir, progress, nll_tests)
    del model  # free the LM before COMET loads its own model
    gc.collect()
    _free_cuda()
    label = str(model_dir) if model_dir is not None else cfg.model.name
    return finish_results(cfg, results, tests, hyps, out_dir, label)


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_files(
    cfg: GdigConfig,
    model_dir: str | Path | None,
    src_path: str | Path,
    ref_path: str | Path,
    out_dir: str | Path,
    *,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    name: str = "custom",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate on a user's own line-aligned source and reference files (languages default to
    ``cfg.data``)."""
    spec = TestSetSpec(
        name=name, path=str(src_path), tgt_path=str(ref_path), format="parallel",
        src_lang=src_lang or cfg.data.src_lang, tgt_lang=tgt_lang or cfg.data.tgt_lang,
    )
    return evaluate_model(cfg, model_dir, out_dir, test_sets=[spec], progress=progress)


def score_files(hyp_path: str | Path, ref_path: str | Path, tgt_lang: str) -> dict[str, Any]:
    """BLEU/chrF of an existing hypothesis file against a reference file (no model needed)."""
    hyps, refs = read_lines(hyp_path), read_lines(ref_path)
    return corpus_metrics(hyps, refs, tgt_lang)
