"""Paired bootstrap (sacrebleu) between any two methods of a finished run, over their shared
finetuning seeds: the report tests each influence method only against random, the best field
filter by mean and the QE baseline.

    python scripts/paired_significance.py RUN_DIR SYSTEM BASELINE [BASELINE ...] [--tgt-lang en]

Reads the run's records for each cell's evaluation directory; prints one row per test set, metric
and seed (``all``: the seeds pooled).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdig_core.evaluation.evaluate import read_lines  # noqa: E402
from gdig_core.evaluation.significance import compare_methods  # noqa: E402
from tasks.caching.stage_cache import stage_dir  # noqa: E402
from tasks.runtime.records import read_records  # noqa: E402


def evaluation_dirs(run_dir: Path) -> dict[str, Path]:
    """``evaluation/<method>/b<budget>/s<seed>`` -> its directory, from every record file."""
    found: dict[str, Path] = {}
    for path in sorted((run_dir / "records").glob("*.jsonl")):
        for rec in read_records(path):
            if str(rec.get("stage", "")).startswith("evaluation/") and rec.get("event") in ("computed", "cached"):
                found[rec["stage"]] = stage_dir(run_dir, "evaluation", rec["key"])
    return found


def method_hypotheses(dirs: dict[str, Path], method: str) -> dict[int, dict[str, list[str]]]:
    out: dict[int, dict[str, list[str]]] = {}
    for stage, d in dirs.items():
        parts = stage.split("/")
        if len(parts) == 4 and parts[1] == method and parts[3].startswith("s"):
            out[int(parts[3][1:])] = {t.name: read_lines(next(t.glob("hypotheses.*")))
                                      for t in sorted(d.iterdir()) if t.is_dir()}
    if not out:
        raise SystemExit(f"no evaluated cell of method {method!r} in the run's records")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("system")
    ap.add_argument("baselines", nargs="+")
    ap.add_argument("--tgt-lang", default="en")
    args = ap.parse_args()
    dirs = evaluation_dirs(args.run_dir)
    system = method_hypotheses(dirs, args.system)
    first = dirs[next(k for k in dirs if k.split("/")[1:2] == [args.system])]
    refs = {t.name: read_lines(next(t.glob("reference.*"))) for t in sorted(first.iterdir()) if t.is_dir()}
    print("| system | baseline | test | metric | seed | sentences | system | baseline | delta | p |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for base in args.baselines:
        for r in compare_methods(system, method_hypotheses(dirs, base), refs, args.tgt_lang):
            print(f"| {args.system} | {base} | {r['test']} | {r['metric']} | {r['seed']} | {r['sentences']} | "
                  f"{r['system_score']:.2f} | {r['baseline_score']:.2f} | {r['delta']:+.2f} | {r['p_value']:.3f} |")


if __name__ == "__main__":
    main()
