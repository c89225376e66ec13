"""``gdig data check``: validate dataset files and print what a pipeline run would see."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gdig_core.config import ConfigError, DataConfig, DatasetSpec
from gdig_core.data import DataError, read_dataset, write_jsonl
from gdig_core.noise import NOISE_KINDS, corrupt_pairs


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (argparse then names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def noise_kinds(text: str) -> list[str]:
    """argparse type: a comma list of known noise kinds, at least one."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise argparse.ArgumentTypeError(f"no noise kind given; choose from {', '.join(NOISE_KINDS)}")
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown noise kind {unknown[0]!r}; choose from {', '.join(NOISE_KINDS)}")
    return kinds


def read_hypotheses(path: str) -> dict[str, str]:
    """``{id: hyp}`` from a JSONL file of ``{"id": ..., "hyp": ...}``; a bad line is a DataError
    naming file, line and field."""
    hyps: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, None, None, "no such file or directory") from None
    except UnicodeDecodeError as err:
        raise DataError(path, None, None, f"not UTF-8 text (byte {err.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, None, f"broken JSON: {err.msg} at column {err.colno}") from None
        if not isinstance(row, dict):
            raise DataError(path, number, None, "a JSON line must be an object with 'id' and 'hyp'")
        for field in ("id", "hyp"):
            if field not in row:
                raise DataError(path, number, field, "missing")
        if not isinstance(row["hyp"], str):
            raise DataError(path, number, "hyp", f"must be a string, got {type(row['hyp']).__name__}")
        hyps[str(row["id"])] = row["hyp"]
    if not hyps:
        raise DataError(path, None, None, "no hypotheses in the file")
    return hyps


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser(
        "check",
        help="validate files; print rows, duplicates, quarantined rows by reason, languages, lengths",
    )
    check.add_argument("paths", nargs="+", help="dataset files (JSONL, TSV, Parquet, a saved datasets dir)")
    check.add_argument("--tgt-path", help="target file for line-aligned parallel text (one source path)")
    check.add_argument("--format", default="auto", choices=["auto", "jsonl", "tsv", "parallel", "parquet", "hf"])
    check.add_argument("--src-lang", default="de")
    check.add_argument("--tgt-lang", default="en")
    check.add_argument("--max-chars", type=positive_int, default=DataConfig().max_chars)
    check.add_argument(
        "--strict", action="store_true", help="treat every bad row as fatal (as for seed and test sets)"
    )
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=run_check)

    corrupt = data_sub.add_parser(
        "corrupt", help="inject labelled, deterministic noise into a pool (for selection experiments)"
    )
    corrupt.add_argument("input", help="pool file (any readable format)")
    corrupt.add_argument("output", help="JSONL out: the pairs plus 'noise' (kind or clean) and 'original_tgt'")
    corrupt.add_argument("--fraction", type=fraction, default=0.3)
    corrupt.add_argument("--seed", type=int, default=0)
    corrupt.add_argument("--kinds", type=noise_kinds, default=list(NOISE_KINDS[:4]),
                         help=f"comma list of {', '.join(NOISE_KINDS)} (default: the first four)")
    corrupt.add_argument("--src-lang", default="de")
    corrupt.add_argument("--tgt-lang", default="en")
    corrupt.add_argument("--third-language", help="text file, one sentence a line, for 'wrong_language' targets")
    corrupt.add_argument(
        "--mt-hypotheses", help="JSONL of {id, hyp}: a weak system's translations, for 'low_quality_mt'"
    )
    corrupt.set_defaults(func=run_corrupt)


def _print_summary(stats: dict) -> None:
    print(f"{stats['file']}")
    print(f"  rows read          {stats['rows_read']}")
    print(f"  rows kept          {stats['rows_kept']}")
    print(f"  duplicates removed {stats['duplicates_removed']}")
    print(f"  quarantined        {stats['quarantined']}")
    for reason, count in sorted(stats["quarantined_by_reason"].items()):
        print(f"    {count:6d}  {reason}")
    print("  languages          " + ", ".join(f"{k}: {v}" for k, v in stats["languages"].items()))
    for side in ("src_chars", "tgt_chars"):
        print(f"  {side:18s} " + " ".join(f"{k}={v:.0f}" for k, v in stats[side].items()))


def run_check(args: argparse.Namespace) -> int:
    if args.tgt_path and len(args.paths) != 1:
        raise DataError(args.tgt_path, None, None, "--tgt-path pairs with exactly one source path")
    data_cfg = DataConfig(
        data_dir=".", src_lang=args.src_lang, tgt_lang=args.tgt_lang, max_chars=args.max_chars,
        quarantine_pool=not args.strict,
    )
    summaries = []
    for path in args.paths:
        fmt = "parallel" if args.tgt_path else args.format
        spec = DatasetSpec(path=str(Path(path)), format=fmt, tgt_path=args.tgt_path)
        result = read_dataset(spec, data_cfg, "pool")
        summaries.append(result.stats)
        if not args.json:
            _print_summary(result.stats)
            for rec in result.quarantine[:5]:
                print(f"    e.g. line {rec['line']}: {rec['field'] or '-'}: {rec['reason']}")
    if args.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
    return 0


def run_corrupt(args: argparse.Namespace) -> int:
    data_cfg = DataConfig(data_dir=".", src_lang=args.src_lang, tgt_lang=args.tgt_lang)
    table = read_dataset(DatasetSpec(path=args.input), data_cfg, "pool").table
    kinds = args.kinds
    if "low_quality_mt" in kinds and not args.mt_hypotheses:
        raise ConfigError("--kinds low_quality_mt needs --mt-hypotheses (JSONL of {id, hyp})")
    third = None
    if args.third_language:
        if not Path(args.third_language).is_file():
            raise DataError(args.third_language, None, None, "no such file (--third-language)")
        third = [x for x in Path(args.third_language).read_text(encoding="utf-8").splitlines() if x.strip()]
    hyps = read_hypotheses(args.mt_hypotheses) if args.mt_hypotheses else None
    out = corrupt_pairs(table, args.fraction, kinds, args.seed, third, hyps)
    write_jsonl(out.to_pylist(), args.output)
    counts: dict[str, int] = {}
    for label in out.column("noise").to_pylist():
        counts[label] = counts.get(label, 0) + 1
    print(f"wrote {out.num_rows} pairs to {args.output}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
