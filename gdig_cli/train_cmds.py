"""``gdig finetune CONFIG --data FILE`` and ``gdig evaluate CONFIG --model DIR``.

Stand-alone entry points to the training and evaluation stages, for a user's own data and
models (the pipeline, ``gdig run``, calls the same library functions).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set finetune.train.epochs=2 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ft = subparsers.add_parser(
        "finetune",
        help="finetune the base model on a file of translation pairs (full or LoRA per the config)",
        description="Finetune with the G-DIG prompt and the prompt mask. Uses finetune.train from "
        "the config (reference.train with --reference). Re-running the same command after an "
        "interruption resumes from the last checkpoint.",
    )
    _common(ft)
    ft.add_argument("--data", required=True, help="training pairs: JSONL, TSV, Parquet, a saved datasets dir, "
                    "or a source text file with --tgt-path")
    ft.add_argument("--tgt-path", help="target file when --data is a line-aligned source text file")
    ft.add_argument("--out", help="output checkpoint directory (default <run_dir>/finetune/<data name>)")
    ft.add_argument("--base-model", help="base checkpoint dir or hub id (default: model.name from the config)")
    ft.add_argument("--reference", action="store_true", help="use reference.train (the step-1 reference model)")
    ft.set_defaults(func=run_finetune)

    ev = subparsers.add_parser(
        "evaluate",
        help="translate the test sets with a model and score BLEU/chrF (COMET when configured)",
        description="Evaluate on evaluation.test_sets from the config (FLORES devtest and WMT22 by "
        "default), or on your own files with --src/--ref.",
    )
    _common(ev)
    ev.add_argument("--model", help="checkpoint directory (default: the config's base model, zero-shot)")
    ev.add_argument("--out", help="output directory (default <run_dir>/evaluate/<model name>)")
    ev.add_argument("--src", help="your own source file (one sentence per line)")
    ev.add_argument("--ref", help="its reference file (line-aligned with --src)")
    ev.add_argument("--src-lang", help="language of --src (default data.src_lang)")
    ev.add_argument("--tgt-lang", help="language of --ref (default data.tgt_lang)")
    ev.add_argument("--name", default="custom", help="name of the --src/--ref test set (default custom)")
    ev.add_argument("--test-set", dest="test_sets", action="append", default=[], metavar="NAME",
                    help="evaluate only these configured test sets (repeatable)")
    ev.set_defaults(func=run_evaluate)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _read_training_pairs(cfg: Any, data: str, tgt_path: str | None) -> Any:
    from gdig_core.config import DatasetSpec
    from gdig_core.data.readers import read_dataset

    spec = DatasetSpec(path=str(Path(data)), tgt_path=tgt_path, format="parallel" if tgt_path else "auto")
    result = read_dataset(spec, cfg.data, "pool", cfg.prompt.language_names)
    if result.quarantine:
        print(f"note: {len(result.quarantine)} bad rows left out ({result.stats['quarantined_by_reason']})",
              file=sys.stderr)
    return result.table


def _base_model(cfg: Any, args: argparse.Namespace, table: Any, out: Path) -> str | None:
    """The base model path; for ``model.name: tiny`` a tiny model is built from the data."""
    if args.base_model:
        return args.base_model
    if cfg.model.name != "tiny":
        return None
    from gdig_core.training.models import build_tiny_model

    n = cfg.model.tiny.tokenizer_texts
    texts = table.column("src").to_pylist()[:n] + table.column("tgt").to_pylist()[:n]
    path = build_tiny_model(cfg.model.tiny, texts, out.parent / f"{out.name}.tiny-base", seed=0)
    print(f"built a tiny base model from the data: {path}", file=sys.stderr)
    return str(path)


def run_finetune(args: argparse.Namespace) -> int:
    from gdig_core.config import load_config
    from gdig_core.training.finetune import finetune

    _setup_logging()
    cfg = load_config(args.config, args.overrides)
    train_cfg = cfg.reference.train if args.reference else cfg.finetune.train
    table = _read_training_pairs(cfg, args.data, args.tgt_path)
    out = Path(args.out) if args.out else Path(cfg.orchestration.run_dir) / "finetune" / Path(args.data).stem
    base = _base_model(cfg, args, table, out)
    path = finetune(cfg, train_cfg, table, out, base_model=base, progress=not args.no_progress)
    summary = json.loads((path / "training_summary.json").read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps({"model": str(path), **{k: v for k, v in summary.items() if k != "losses"}}, indent=2))
        return 0
    print(f"model:        {path}")
    print(f"pairs:        {summary['n_pairs']}  steps: {summary['steps']}  epochs: {summary['epochs']:.2f}")
    print(f"loss:         {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}")
    print(f"throughput:   {summary['examples_per_s']:.1f} examples/s, {summary['tokens_per_s']:.0f} tokens/s")
    print(f"train time:   {summary['train_seconds']:.1f} s")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from gdig_core.config import ConfigError, TestSetSpec, load_config
    from gdig_core.evaluation.evaluate import evaluate_model

    _setup_logging()
    from gdig_core.names import check_safe_name

    cfg = load_config(args.config, args.overrides)
    if bool(args.src) != bool(args.ref):
        raise ConfigError("--src and --ref go together")
    try:
        check_safe_name(args.name, "--name")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.src:
        specs = [TestSetSpec(
            name=args.name, path=str(Path(args.src)), tgt_path=str(Path(args.ref)), format="parallel",
            src_lang=args.src_lang or cfg.data.src_lang, tgt_lang=args.tgt_lang or cfg.data.tgt_lang,
        )]
    else:
        specs = cfg.evaluation.test_sets
        if args.test_sets:
            known = {s.name: s for s in specs}
            unknown = [n for n in args.test_sets if n not in known]
            if unknown:
                raise ConfigError(f"--test-set {unknown[0]!r}: not in evaluation.test_sets ({sorted(known)})")
            specs = [known[n] for n in args.test_sets]
    label = Path(args.model).name if args.model else cfg.model.name
    out = Path(args.out) if args.out else Path(cfg.orchestration.run_dir) / "evaluate" / label
    results = evaluate_model(cfg, args.model, out, test_sets=specs, progress=not args.no_progress)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    print(f"model: {results['model']}   output: {out}")
    print(f"{'test set':<12} {'n':>6} {'BLEU':>7} {'chrF':>7} {'COMET':>7}  sent/s")
    for name, m in results["test_sets"].items():
        comet = f"{m['comet']:.4f}" if m.get("comet") is not None else "-"
        print(f"{name:<12} {m['n_sentences']:>6} {m['bleu']:>7.2f} {m['chrf']:>7.2f} {comet:>7}  {m['sentences_per_s']:.1f}")
    for name, m in results["test_sets"].items():
        for note in m.get("notes", []):
            print(f"note ({name}): {note}")
    first = next(iter(results["test_sets"].values()))
    print(f"BLEU signature: {first['signatures']['bleu']}")
    print(f"chrF signature: {first['signatures']['chrf']}")
    return 0
