"""Paired significance (gdig_core.evaluation.significance, report_evidence): sacrebleu's paired bootstrap per
seed and over the seeds, checked against sacrebleu's own corpus scores and command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from paths import DATA_DIR

from gdig_core.evaluation.evaluate import read_lines
from gdig_core.evaluation.significance import compare_methods, paired_bootstrap
from gdig_core.report.comparisons import (
    key_comparisons,
    significance_rows,
    significance_verdicts,
    target_check,
)

REFS = read_lines(DATA_DIR / "de-en" / "flores.devtest.en")[:120]


def _degrade(line: str, every: int) -> str:
    words = line.split()
    return " ".join(w for j, w in enumerate(words) if j % every)


GOOD = [_degrade(r, 9) for r in REFS]
BAD = [_degrade(r, 2) for r in REFS]


def test_a_much_better_system_is_significant_and_an_equal_one_is_not() -> None:
    better = paired_bootstrap(GOOD, BAD, REFS, "en", n_samples=200)
    assert better["bleu"]["delta"] == pytest.approx(
        sacrebleu.corpus_bleu(GOOD, [REFS]).score - sacrebleu.corpus_bleu(BAD, [REFS]).score)
    assert better["chrf"]["system_score"] == pytest.approx(sacrebleu.corpus_chrf(GOOD, [REFS]).score)
    assert better["bleu"]["p_value"] < 0.01 and better["chrf"]["p_value"] < 0.01
    same = paired_bootstrap(GOOD, GOOD, REFS, "en", n_samples=200)
    assert same["bleu"]["delta"] == 0 and same["bleu"]["p_value"] == 1.0  # the same cached model
    close = paired_bootstrap(GOOD[:-1] + [BAD[-1]], GOOD, REFS, "en", n_samples=200)
    assert abs(close["bleu"]["delta"]) < 1 and close["bleu"]["p_value"] > 0.05


def test_p_value_matches_the_sacrebleu_command_line(tmp_path: Path) -> None:
    """The library call is the CLI's ``--paired-bs`` with the same seed and resamples."""
    half = GOOD[:60] + BAD[60:]
    for name, lines in (("ref", REFS), ("base", BAD), ("sys", half)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli = Path(sys.executable).parent / "sacrebleu"
    out = subprocess.run([str(cli), str(tmp_path / "ref"), "-i", str(tmp_path / "base"), str(tmp_path / "sys"),
                          "-m", "bleu", "--paired-bs", "--paired-bs-n", "300", "-f", "json"],
                         capture_output=True, text=True, check=True).stdout
    cli_p = next(r for r in json.loads(out) if r["system"].endswith("sys"))["BLEU"]["p_value"]
    ours = paired_bootstrap(half, BAD, REFS, "en", n_samples=300)["bleu"]["p_value"]
    assert ours == pytest.approx(float(cli_p), abs=1e-3)


def test_per_seed_and_over_the_seeds() -> None:
    system = {0: {"flores": GOOD}, 1: {"flores": GOOD}, 2: {"flores": GOOD}}
    baseline = {0: {"flores": BAD}, 1: {"flores": BAD}}  # seed 2 was not finetuned for the baseline
    rows = compare_methods(system, baseline, {"flores": REFS}, "en", n_samples=100)
    assert sorted({r["seed"] for r in rows}) == ["0", "1", "all"]
    over = next(r for r in rows if r["seed"] == "all" and r["metric"] == "bleu")
    assert over["sentences"] == 2 * len(REFS) and over["delta"] > 0


def test_report_rows_pick_random_the_best_field_filter_and_qe() -> None:
    rows = [
        {"method": "gdig", "kind": "gdig", "budget": 200, "flores/bleu": 20.0},
        {"method": "gdig.no-qe", "kind": "gdig", "budget": 200, "flores/bleu": 19.0},
        {"method": "random", "kind": "random", "budget": 200, "flores/bleu": 15.0},
        {"method": "cheap", "kind": "cheap", "budget": 200, "flores/bleu": 18.0},
        {"method": "qe", "kind": "qe", "budget": 200, "flores/bleu": 17.0},
        {"method": "opusfilter", "kind": "opusfilter", "budget": 200, "flores/bleu": 16.0},
        {"method": "gdig.filter-random", "kind": "random", "budget": 200, "flores/bleu": 19.5},
    ]
    pairs = key_comparisons(rows, "flores")
    assert ("gdig", "random", "random") in pairs and ("gdig", "cheap", "best field filter") in pairs
    assert ("gdig", "qe", "QE baseline") in pairs and ("gdig.no-qe", "cheap", "best field filter") in pairs
    assert not any(b == "gdig.filter-random" for _, b, _ in pairs)
    hyps = {m: {0: {"flores": GOOD if m.startswith("gdig") else BAD}} for m in ("gdig", "gdig.no-qe", "random",
                                                                             "cheap", "qe")}
    sig = significance_rows(rows, hyps, {"flores": REFS}, "en")
    assert {(r["system"], r["role"]) for r in sig} >= {("gdig", "random"), ("gdig", "best field filter")}
    lines = significance_verdicts(sig)
    assert any(line.startswith("flores: gdig vs cheap (best field filter): BLEU +") and "better" in line
               for line in lines)
    assert target_check(sig, "gdig")["met"]
