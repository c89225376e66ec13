"""Gemma-3-270M on de->en: zero-shot vs one epoch of LoRA vs one epoch of full finetuning on
2,000 pool pairs, BLEU/chrF on FLORES devtest and WMT22, with the time of every stage.

Meant for one GPU (an H100: about 5-10 minutes in all, most of it generation and the one-off GGUF
conversion). Usage::

    python bench/bench_finetune_gemma.py --out runs/bench-gemma            # the real benchmark
    python bench/bench_finetune_gemma.py --model tiny --pairs 50 \\
        --max-sentences 8 --out /tmp/bench-smoke                            # CPU smoke test

Writes ``<out>/bench_results.json`` and prints a markdown table for BENCHMARKS.md. Every stage
uses the library code the pipeline uses (``training.finetune``, ``evaluation.evaluate_model``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdig_core.config import (  # noqa: E402
    DatasetSpec,
    GdigConfig,
    LoraConfig,
    TinyModelConfig,
    TrainConfig,
)
from gdig_core.data.readers import read_dataset  # noqa: E402
from gdig_core.evaluation.evaluate import evaluate_model  # noqa: E402
from gdig_core.io import atomic_write_json  # noqa: E402
from gdig_core.training.finetune import finetune  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (offline GGUF package), tiny, or a dir")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mt"))
    p.add_argument("--out", default="runs/bench-gemma")
    p.add_argument("--pairs", type=int, default=2000, help="de-en pool pairs to train on (seeded sample)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr-full", type=float, default=2e-5)
    p.add_argument("--lr-lora", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256, help="prompt+target tokens in training")
    p.add_argument("--max-sentences", type=int, default=None, help="first N sentences of each test set")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--stages", default="zero-shot,lora,full")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def base_model_dir(cfg: GdigConfig, args: argparse.Namespace, pool_texts: list[str], out: Path) -> str:
    if args.model == "tiny":
        from gdig_core.training.models import build_tiny_model

        return str(build_tiny_model(TinyModelConfig(vocab_size=2000), pool_texts, out / "tiny-base"))
    if args.model == "gemma-3-270m":
        from gdig_core.training.models import gemma_checkpoint

        return str(gemma_checkpoint(cfg.model.cache_dir))  # converted once, then cached
    return args.model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = GdigConfig()
    cfg.data.data_dir = args.data_dir
    cfg.model.device = args.device
    cfg.model.dtype = "float32"  # fp32 master weights; bf16 autocast on CUDA (train.bf16 auto)
    cfg.prompt.max_length = args.max_length
    cfg.evaluation.batch_size = args.eval_batch_size
    cfg.evaluation.max_new_tokens = args.max_new_tokens
    cfg.evaluation.max_sentences = args.max_sentences
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]

    results: dict[str, Any] = {"args": vars(args), "environment": environment(), "stages": {}}
    t0 = time.perf_counter()
    pool = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=args.pairs), cfg.data, "pool").table
    texts = pool.column("src").to_pylist() + pool.column("tgt").to_pylist()
    base = base_model_dir(cfg, args, texts, out)
    results["stages"]["prepare"] = {"seconds": time.perf_counter() - t0, "pairs": pool.num_rows, "base": base}
    print(f"prepare: {results['stages']['prepare']['seconds']:.1f} s, {pool.num_rows} pairs, base {base}", flush=True)

    trains = {
        "lora": TrainConfig(
            epochs=args.epochs, learning_rate=args.lr_lora, batch_size=args.batch_size, warmup_ratio=0.03,
            seed=args.seed, lora=LoraConfig(
                r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        ),
        "full": TrainConfig(epochs=args.epochs, learning_rate=args.lr_full, batch_size=args.batch_size,
                            warmup_ratio=0.03, seed=args.seed),
    }
    for stage in stages:
        record: dict[str, Any] = {}
        model_dir = base
        if stage != "zero-shot":
            t = time.perf_counter()
            model_dir = str(finetune(cfg, trains[stage], pool, out / f"{stage}-model", base_model=base))
            summary = json.loads((Path(model_dir) / "training_summary.json").read_text())
            record["train"] = {"seconds": time.perf_counter() - t,
                               **{k: summary[k] for k in ("steps", "first_loss", "final_loss", "examples_per_s",
                                                          "tokens_per_s", "train_seconds", "trainable_params")}}
        t = time.perf_counter()
        ev = evaluate_model(cfg, model_dir, out / f"{stage}-eval", progress=True)
        record["eval_seconds"] = time.perf_counter() - t
        record["test_sets"] = {
            name: {k: m[k] for k in ("bleu", "chrf", "n_sentences", "sentences_per_s", "generation_seconds")}
            for name, m in ev["test_sets"].items()
        }
        record["signatures"] = next(iter(ev["test_sets"].values()))["signatures"]
        results["stages"][stage] = record
        atomic_write_json(out / "bench_results.json", results)
        print(json.dumps({stage: record}, indent=1), flush=True)

    results["total_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "bench_results.json", results)
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"Device: {env.get('gpu') or 'CPU'}; torch {env['torch']}, transformers {env['transformers']}.", "",
             "| stage | train s | train ex/s | final loss | test set | n | BLEU | chrF | gen sent/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for stage, rec in results["stages"].items():
        if stage == "prepare":
            continue
        tr = rec.get("train", {})
        if tr:
            head = f"| {stage} | {tr['seconds']:.1f} | {tr['examples_per_s']:.1f} | {tr['final_loss']:.3f} |"
        else:
            head = f"| {stage} | - | - | - |"
        for name, m in rec["test_sets"].items():
            lines.append(f"{head} {name} | {m['n_sentences']} | {m['bleu']:.2f} | {m['chrf']:.2f} | "
                         f"{m['sentences_per_s']:.1f} |")
    lines.append(f"\nprepare (load/convert model, read data): {results['stages']['prepare']['seconds']:.1f} s; "
                 f"total {results.get('total_seconds', 0):.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
