"""What the evidence experiment spends its CPU time on, Gemma-3-270M, in one run (ratios, not
lone absolute times: the machine is shared).

1. LoRA training step (r=16 on q/k/v/o, batch 8): logits from the first target position on (what
   ``training.target_loss_sum`` does) against logits at every position (the previous code).
2. Greedy generation of FLORES *dev* sentences (never a test set) at batch 16 against batch 64,
   each with and without the per-batch cap ``evaluation.max_new_tokens_ratio``.
3. One influence capture pass (scoring against 64 seeds, identity and EK-FAC stacked as in the
   experiment) per example, against the training step.

Usage (after the Gemma conversion, which ``make test`` does)::

    .venv/bin/python bench/bench_gemma_cpu.py --out runs/bench-gemma-cpu

Writes ``<out>/bench_gemma_cpu.json`` and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdig_core.config import DatasetSpec, GdigConfig, LoraConfig, TrainConfig  # noqa: E402
from gdig_core.data.readers import read_dataset  # noqa: E402
from gdig_core.io import atomic_write_json  # noqa: E402


def full_logits_loss(model: Any, batch: dict[str, torch.Tensor], autocast_dtype: Any = None) -> torch.Tensor:
    """The previous training loss: logits at every position, prompt included."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100, reduction="sum",
    )


def train_rate(cfg: GdigConfig, table: Any, base: str, out: Path, steps: int, full_logits: bool) -> float:
    import gdig_core.training.finetune as training

    saved = training.target_loss_sum
    if full_logits:
        training.target_loss_sum = full_logits_loss
    try:
        train = TrainConfig(max_steps=steps, batch_size=8, learning_rate=2e-4, lora=LoraConfig(), save_every_minutes=None)
        model_dir = training.finetune(cfg, train, table, out, base_model=base, progress=False)
    finally:
        training.target_loss_sum = saved
    return json.loads((model_dir / "training_summary.json").read_text())["examples_per_s"]


def generation_rate(cfg: GdigConfig, model: Any, tok: Any, sources: list[str], batch: int, ratio: float | None) -> float:
    from gdig_core.evaluation.generation import generate_translations

    cfg = cfg.model_copy(deep=True)
    cfg.evaluation.max_new_tokens_ratio = ratio
    t0 = time.perf_counter()
    generate_translations(model, tok, sources, "de", "en", cfg, batch_size=batch, max_new_tokens=128)
    return len(sources) / (time.perf_counter() - t0)


def capture_rate(cfg: GdigConfig, model: Any, tok: Any, rows: list[dict], seeds: list[dict], out: Path) -> float:
    from gdig_core.config import CurvatureConfig, ScoringConfig
    from gdig_core.data.encoding import encode_pairs, iter_batches
    from gdig_core.influence.benefit import score_shard
    from gdig_core.influence.factors import fit_factor_set
    from gdig_core.influence.hooks import select_tracked_modules
    from gdig_core.influence.seed_preconditioning import precondition_seeds
    from gdig_core.influence.variants import score_variants

    curv = CurvatureConfig(preset="gdig-official", method="ekfac")
    sc = ScoringConfig(batch_size=8, feature_dim=256, variants=["identity-raw", "identity-cosine"])
    tracked = select_tracked_modules(model, curv)
    enc, senc = encode_pairs(tok, rows, cfg), encode_pairs(tok, seeds, cfg)
    factors = fit_factor_set(model, lambda: iter_batches(enc[:16], 8, tok.pad_token_id), tracked, curv,
                             ["ekfac", "identity"])
    pre = precondition_seeds(model, iter_batches(senc, 8, tok.pad_token_id), factors, curv, sc)
    t0 = time.perf_counter()
    score_shard(model, iter_batches(enc, 8, tok.pad_token_id), pre, None, sc, out / "scores.parquet",
                variants=score_variants("ekfac", sc.variants))
    return len(enc) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mt"))
    p.add_argument("--out", default="runs/bench-gemma-cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--sentences", type=int, default=64)
    p.add_argument("--model", default="gemma-3-270m")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from gdig_core.training.models import load_model, model_path

    cfg = GdigConfig()
    cfg.data.data_dir = args.data_dir
    cfg.model.name, cfg.model.device = args.model, "cpu"
    base = model_path(cfg.model)
    pool = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", max_chars=200, sample=8 * args.steps), cfg.data,
                        "pool").table
    dev = read_dataset(DatasetSpec(path="de-en/flores.dev.tsv", sample=args.sentences + 64), cfg.data, "seed").table
    dev_rows = dev.to_pylist()
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    results["train_full_logits"] = train_rate(cfg, pool, base, out / "lora-full-logits", args.steps, True)
    results["train_target_logits"] = train_rate(cfg, pool, base, out / "lora-target-logits", args.steps, False)
    model, tok = load_model(cfg.model, path=base)
    sources = [r["src"] for r in dev_rows[: args.sentences]]
    generation_rate(cfg, model, tok, sources[:2], 2, None)  # the newline-token table, once
    for batch in (16, 64):
        for ratio in (None, 2.5):
            results[f"generate_b{batch}_{'cap' if ratio else 'nocap'}"] = generation_rate(cfg, model, tok, sources, batch, ratio)
    results["capture"] = capture_rate(cfg, model, tok, pool.to_pylist(), dev_rows[args.sentences:], out)
    atomic_write_json(out / "bench_gemma_cpu.json", results)
    t = results
    print("| what | examples or sentences / s | ratio |")
    print("|---|---|---|")
    print(f"| LoRA step, logits at every position | {t['train_full_logits']:.2f} | 1.00 |")
    print(f"| LoRA step, logits from the first target on | {t['train_target_logits']:.2f} | "
          f"{t['train_target_logits'] / t['train_full_logits']:.2f} |")
    base_gen = t["generate_b16_nocap"]
    for key in ("generate_b16_nocap", "generate_b16_cap", "generate_b64_nocap", "generate_b64_cap"):
        print(f"| greedy generation, {key.removeprefix('generate_')} | {t[key]:.2f} | {t[key] / base_gen:.2f} |")
    print(f"| capture pass (scoring, 64 seeds x 2 preconditioners) vs the LoRA step | {t['capture']:.2f} | "
          f"{t['capture'] / t['train_target_logits']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
