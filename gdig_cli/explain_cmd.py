"""``gdig explain RUN_DIR ID``: why a candidate was or was not selected.

Reads, relative to RUN_DIR unless given as absolute paths (see :mod:`gdig_core.report.explain`):
``scores/*.parquet`` (score shards, ``--scores``), ``data/pool.parquet`` (``--pool``),
``data/seed.parquet`` (``--seed``) and ``selection/<method>/b<budget>/`` (``--selection``:
``candidates.parquet``, ``selected.parquet``, ``summary.json`` written by
:func:`gdig_core.selection.select`). Where RUN_DIR has the pipeline's ``outputs.json``, the score
and data locations it records replace the first three defaults.
"""

from __future__ import annotations

import argparse
import json
import sys

from gdig_cli.arg_types import positive_int
from gdig_core.report.explain import (
    DEFAULT_POOL,
    DEFAULT_SCORES,
    DEFAULT_SEED,
    DEFAULT_SELECTION,
    ExplainError,
    explain_candidate,
    format_explanation,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explain why a candidate was or was not selected",
        description="Benefit statistics, most helped/harmed seeds, cluster and selection decisions of one candidate.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("id", metavar="ID", help="candidate id (the pool's id column)")
    p.add_argument("--method", help="only the selection of this method name (default: all found)")
    p.add_argument("--budget", type=positive_int, help="only this budget (default: all found)")
    p.add_argument("--scores", help=f"score shard glob (default: outputs.json, else {DEFAULT_SCORES})")
    p.add_argument("--pool", help=f"pool pairs Parquet (default: outputs.json, else {DEFAULT_POOL})")
    p.add_argument("--seed", help=f"seed pairs Parquet (default: outputs.json, else {DEFAULT_SEED})")
    p.add_argument(
        "--selection", default=DEFAULT_SELECTION, help=f"selection output root (default {DEFAULT_SELECTION})"
    )
    p.add_argument("--top", type=positive_int, default=5, help="how many helped/harmed seeds to show (default 5)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    try:
        expl = explain_candidate(
            args.run_dir,
            args.id,
            scores=args.scores,
            pool=args.pool,
            seed=args.seed,
            selection=args.selection,
            method=args.method,
            budget=args.budget,
            top_n=args.top,
        )
    except ExplainError as err:
        print(f"gdig: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(expl.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_explanation(expl))
    return 0
