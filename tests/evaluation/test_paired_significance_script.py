"""scripts/paired_significance.py: it finds each method's cells through the run's records, pairs
their shared seeds and agrees with compare_methods on the same hypotheses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from paths import PROJECT_ROOT

from gdig_core.evaluation.significance import compare_methods

SCRIPT = PROJECT_ROOT / "scripts" / "paired_significance.py"
REFS = [f"the house number {i} is small and red ." for i in range(30)]


def _cell(run: Path, stage: str, key: str, hyps: list[str], event: str = "computed") -> None:
    d = run / "cas" / "evaluation" / key[:24] / "flores"
    d.mkdir(parents=True)
    (d / "hypotheses.en").write_text("\n".join(hyps) + "\n")
    (d / "reference.en").write_text("\n".join(REFS) + "\n")
    with (run / "records" / "r.jsonl").open("a") as f:
        f.write(json.dumps({"event": event, "key": key, "stage": stage}) + "\n")


def test_script_pairs_shared_seeds_and_matches_compare_methods(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    good = {0: list(REFS), 1: [r.replace("red", "blue") for r in REFS]}
    bad = {0: [r.split(" is ")[0] for r in REFS], 1: [r.replace("small", "big") for r in REFS],
           2: list(REFS)}  # seed 2 has no partner: it must not be paired
    for seed, hyps in good.items():
        _cell(run, f"evaluation/sys/b10/s{seed}", f"a{seed}" + "0" * 62, hyps)
    for seed, hyps in bad.items():
        _cell(run, f"evaluation/base/b10/s{seed}", f"b{seed}" + "0" * 62, hyps, event="cached")
    out = subprocess.run([sys.executable, str(SCRIPT), str(run), "sys", "base"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| sys ")]
    seeds = sorted({r[4] for r in rows})
    assert seeds == ["0", "1", "all"]
    expected = compare_methods({s: {"flores": h} for s, h in good.items()},
                               {s: {"flores": h} for s, h in bad.items()}, {"flores": REFS}, "en")
    by_key = {(r[3], r[4]): float(r[8]) for r in rows}
    for e in expected:
        assert abs(by_key[(e["metric"], e["seed"])] - e["delta"]) < 0.01
    pooled = next(r for r in rows if r[3] == "bleu" and r[4] == "all")
    assert pooled[5] == "60" and float(pooled[8]) > 0


def test_script_names_a_method_without_cells(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    _cell(run, "evaluation/sys/b10/s0", "a" * 64, REFS)
    out = subprocess.run([sys.executable, str(SCRIPT), str(run), "sys", "missing"], capture_output=True, text=True)
    assert out.returncode != 0 and "missing" in out.stderr
