"""``gdig data check``: validate dataset files and print what a pipeline run would see.
``gdig data corrupt``: inject labelled, realistic noise into a pool (``gdig_core.data.noise``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gdig_cli.arg_types import positive_int
from gdig_core.config import ConfigError, DataConfig, DatasetSpec, ModelConfig
from gdig_core.data.noise import MODEL_FREE_KINDS, NOISE_KINDS, corrupt_pairs
from gdig_core.data.pairs import DataError, write_jsonl
from gdig_core.data.readers import read_dataset


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
    check.add_argument("--max-line-bytes", type=positive_int, default=DataConfig().max_line_bytes,
                       help="longest line read, in bytes with its line break (data.max_line_bytes)")
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
    corrupt.add_argument("--fraction", type=float, default=0.3)
    corrupt.add_argument("--seed", type=int, default=0)
    corrupt.add_argument(
        "--kinds",
        default=",".join(MODEL_FREE_KINDS),
        help=f"comma list of {', '.join(NOISE_KINDS)}, or 'all' (default: all but low_quality_mt)",
    )
    corrupt.add_argument("--src-lang", default="de")
    corrupt.add_argument("--tgt-lang", default="en")
    corrupt.add_argument("--third-language", help="text file, one sentence a line, for 'wrong_language' targets")
    weak = corrupt.add_mutually_exclusive_group()
    weak.add_argument(
        "--mt-hypotheses", help="JSONL of {id, hyp}: a weak system's translations, for 'low_quality_mt'"
    )
    weak.add_argument(
        "--weak-mt",
        metavar="MODEL",
        help="translate the rows picked for 'low_quality_mt' with this model, few-shot and greedy "
        "(gemma-3-270m, a hub id or a checkpoint dir)",
    )
    corrupt.add_argument("--device", default="auto", help="device for --weak-mt (auto, cpu, cuda)")
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
        max_line_bytes=args.max_line_bytes, quarantine_pool=not args.strict,
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


def parse_kinds(text: str) -> list[str]:
    """``--kinds``: a comma list of noise kinds, or ``all``."""
    if text.strip() == "all":
        return list(NOISE_KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise ConfigError(f"--kinds: no noise kind in {text!r}; choose from {', '.join(NOISE_KINDS)} or 'all'")
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown:
        raise ConfigError(f"--kinds: unknown noise kind(s) {', '.join(unknown)}; choose from {', '.join(NOISE_KINDS)}")
    return kinds


def run_corrupt(args: argparse.Namespace) -> int:
    from gdig_core.evaluation.weak_mt import read_hypotheses, weak_translator

    kinds = parse_kinds(args.kinds)
    weak_source = args.mt_hypotheses or args.weak_mt
    if "low_quality_mt" in kinds and not weak_source:
        raise ConfigError("noise kind 'low_quality_mt' needs --mt-hypotheses FILE or --weak-mt MODEL")
    if weak_source and "low_quality_mt" not in kinds:
        raise ConfigError("--mt-hypotheses / --weak-mt feed 'low_quality_mt', which --kinds does not include")
    if not 0.0 <= args.fraction <= 1.0:
        raise ConfigError(f"--fraction must be in [0, 1], got {args.fraction}")
    # A path (not a model name or hub id) must be a checkpoint directory.
    if args.weak_mt and args.weak_mt.startswith(("/", ".")) and not Path(args.weak_mt).is_dir():
        raise ConfigError(f"--weak-mt: no checkpoint directory {args.weak_mt}")
    output = Path(args.output)
    if not args.output or "\0" in args.output or output.is_dir():
        raise ConfigError(f"data corrupt: the output {args.output!r} must be a file path (JSON lines)")
    # The output replaces its file whole: never one of the inputs the run reads.
    inputs = [p for p in (args.input, args.third_language, args.mt_hypotheses) if p]
    if any(os.path.realpath(p.replace("\0", "")) == os.path.realpath(args.output) for p in inputs):
        raise ConfigError(f"data corrupt: the output {args.output} is one of the inputs; write the noisy pool elsewhere")
    data_cfg = DataConfig(data_dir=".", src_lang=args.src_lang, tgt_lang=args.tgt_lang)
    table = read_dataset(DatasetSpec(path=args.input), data_cfg, "pool").table
    third = None
    if args.third_language:
        if not Path(args.third_language).is_file():
            raise DataError(args.third_language, None, None, "no such file (--third-language)")
        third = [x for x in Path(args.third_language).read_text(encoding="utf-8").splitlines() if x.strip()]
    hyps = read_hypotheses(args.mt_hypotheses) if args.mt_hypotheses else None
    translator = None
    if args.weak_mt:
        model_cfg = ModelConfig(name=args.weak_mt, device=args.device)
        translator = weak_translator(model_cfg, args.src_lang, args.tgt_lang, progress=True)
    try:
        out = corrupt_pairs(table, args.fraction, kinds, args.seed, third, hyps, translator)
    except (ValueError, OSError) as err:  # a hypothesis missing for a picked pair, a model not found, ...
        raise ConfigError(f"data corrupt: {err}") from err
    write_jsonl(out.to_pylist(), args.output)
    counts: dict[str, int] = {}
    for label in out.column("noise").to_pylist():
        counts[label] = counts.get(label, 0) + 1
    print(f"wrote {out.num_rows} pairs to {args.output}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
