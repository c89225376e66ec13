"""How well cheap rules catch each noise kind of ``gdig_core.data.noise``: ROC AUC per kind.

Reads a pool, keeps pairs with both sides at most ``--max-chars`` characters, takes a seeded
sample, corrupts ``--fraction`` of it over the noise kinds (``low_quality_mt`` from a few-shot
weak model, generated for the picked rows only), scores every pair with the cheap filters of
``gdig_core.filters.rules`` plus two diagnostic one-line rules, and prints a Markdown table of
AUCs (clean vs each kind). ``--out`` gets the table, counts, the clean score percentiles and the
settings as JSON. Example (docs/noise.md)::

    .venv/bin/python scripts/noise_realism.py --pool ../shared/data/mt/de-en/pool.wmt17-20.jsonl \\
        --third-language-pool ../shared/data/mt/zh-en/pool.wmt17-20.jsonl --weak-mt gemma-3-270m \\
        --out runs/noise-realism.de-en.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from gdig_core.config import DataConfig, DatasetSpec, ModelConfig
from gdig_core.data.noise import MODEL_FREE_KINDS, NOISE_KINDS, corrupt_pairs
from gdig_core.data.noise_eval import rule_auc_table
from gdig_core.data.readers import read_dataset
from gdig_core.filters.rules import COPY_THRESHOLD, LID_THRESHOLD, cheap_scores


def exact_copy_rule(src: list[str], tgt: list[str]) -> np.ndarray:
    """Diagnostic: -1 when the target equals the source (after stripping), else 0."""
    return -np.array([s.strip() == t.strip() for s, t in zip(src, tgt, strict=True)], dtype=np.float64)


def latin_script_rule(tgt: list[str]) -> np.ndarray:
    """Diagnostic: share of the target's letters in Latin script (a script check for English)."""
    out = np.ones(len(tgt))
    for i, text in enumerate(tgt):
        letters = [c for c in text if c.isalpha()]
        if letters:
            out[i] = sum(c.isascii() or "\u00c0" <= c <= "\u024f" for c in letters) / len(letters)
    return out


def markdown_table(table: dict[str, dict[str, float]], kinds: list[str]) -> str:
    lines = ["| score | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "-" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True, help="pool file (JSONL with id, src, tgt, src_lang, tgt_lang)")
    ap.add_argument("--third-language-pool", help="a pool whose sources feed half of 'wrong_language'")
    ap.add_argument("--src-lang", default="de")
    ap.add_argument("--tgt-lang", default="en")
    ap.add_argument("--max-chars", type=int, default=200)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weak-mt", help="model for 'low_quality_mt' (gemma-3-270m or a checkpoint dir); "
                    "without it only the model-free kinds are used")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="JSON file for the table, counts and settings")
    ap.add_argument("--save-pool", help="also write the corrupted sample here (JSONL, labelled)")
    args = ap.parse_args(argv)

    data_cfg = DataConfig(data_dir=".", src_lang=args.src_lang, tgt_lang=args.tgt_lang, max_chars=args.max_chars)
    table = read_dataset(DatasetSpec(path=args.pool, sample=args.sample), data_cfg, "pool").table
    third = None
    if args.third_language_pool:
        # Its rows name their own languages; only the length limit matters here.
        third_table = read_dataset(DatasetSpec(path=args.third_language_pool), data_cfg, "pool").table
        third = third_table.column("src").to_pylist()
    kinds = list(MODEL_FREE_KINDS)
    translator = None
    if args.weak_mt:
        from gdig_core.evaluation.weak_mt import weak_translator

        kinds = list(NOISE_KINDS)
        name = args.weak_mt
        path = name if Path(name).is_dir() else None
        translator = weak_translator(ModelConfig(name=name, device=args.device), args.src_lang, args.tgt_lang, path=path)
    start = time.perf_counter()
    noisy = corrupt_pairs(table, args.fraction, kinds, args.seed, third, weak_translator=translator)
    corrupt_s = time.perf_counter() - start

    ids = noisy.column("id").to_pylist()
    src = noisy.column("src").to_pylist()
    tgt = noisy.column("tgt").to_pylist()
    labels = dict(zip(ids, noisy.column("noise").to_pylist(), strict=True))
    scores = cheap_scores(src, tgt, args.tgt_lang)
    scores["exact_copy (diagnostic)"] = exact_copy_rule(src, tgt)
    scores["latin_script (diagnostic)"] = latin_script_rule(tgt)
    auc = rule_auc_table(ids, scores, labels)
    clean = np.array([labels[i] == "clean" for i in ids])
    percentiles = {
        name: {f"p{q}": float(np.percentile(scores[name][clean], q)) for q in (1, 2, 5, 50)}
        for name in ("length_ratio", "copy", "language_id")
    }
    clean_rejected = {
        "copy": float((scores["copy"][clean] < COPY_THRESHOLD).mean()),
        "language_id": float((scores["language_id"][clean] < LID_THRESHOLD).mean()),
        "combined": float((scores["combined"][clean] < scores["length_ratio"][clean]).mean()),
    }
    weak_quality = None
    if "low_quality_mt" in kinds:
        import sacrebleu

        picked = [r for r in noisy.to_pylist() if r["noise"] == "low_quality_mt"]
        hyps, refs = [r["tgt"] for r in picked], [r["original_tgt"] for r in picked]
        weak_quality = {
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "sentences": len(picked),
        }
    shown = [*kinds, "all"]
    print(markdown_table(auc, shown))
    counts = Counter(labels.values())
    print("pairs: " + ", ".join(f"{k} {counts[k]}" for k in ["clean", *kinds]))
    print("clean pairs rejected: " + ", ".join(f"{k} {v:.1%}" for k, v in clean_rejected.items()))
    if weak_quality:
        print("weak MT against the references: BLEU {bleu:.1f}, chrF {chrf:.1f} ({sentences} sentences)".format(**weak_quality))
    print(f"corrupting took {corrupt_s:.0f} s; clean-pair score percentiles: {json.dumps(percentiles)}")
    if args.save_pool:
        from gdig_core.data.pairs import write_jsonl

        write_jsonl(noisy.to_pylist(), args.save_pool)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report = {
            "settings": {**vars(args), "kinds": kinds, "copy_threshold": COPY_THRESHOLD, "lid_threshold": LID_THRESHOLD},
            "counts": dict(counts),
            "auc": auc,
            "clean_percentiles": percentiles,
            "clean_rejected": clean_rejected,
            "weak_mt_quality": weak_quality,
            "corrupt_seconds": corrupt_s,
        }
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
