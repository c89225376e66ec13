"""Benchmark of the influence engine against a plain training step and kronfluence, in one run.

Default (GPU): a Llama-shaped model of about 953M parameters (16 layers, hidden 2048, MLP 5632,
vocab 32000, random weights) in bf16, 256-token examples whose first half is masked (prompt),
the 48 MLP linears tracked, 32 seeds. ``--tiny`` shrinks the model and sequence so the same
measurements run on a CPU in about a minute. Reported, all on the same batches:

- training step: forward + backward of the mean loss with every parameter trainable (no optimizer)
- scoring: ``score_shard`` (32 seeds, features, Parquet output) examples/s
- factor fitting: EK-FAC covariance pass + Lambda pass (examples/s over both passes)
- kronfluence 1.0.1: EK-FAC pairwise scores against the same 32 seeds, examples/s
- peak GPU memory of each phase (CUDA only)

    .venv/bin/python bench/bench_influence.py --tiny            # CPU
    python bench/bench_influence.py --batch-size 16              # H100
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gdig_core.config import CurvatureConfig, ScoringConfig  # noqa: E402
from gdig_core.influence.benefit import score_shard  # noqa: E402
from gdig_core.influence.curvature import covariance_stats, eigendecompose, lambda_stats  # noqa: E402
from gdig_core.influence.factors import finalize_factors  # noqa: E402
from gdig_core.influence.hooks import select_tracked_modules  # noqa: E402
from gdig_core.influence.seed_preconditioning import precondition_seeds  # noqa: E402

FULL = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    seq_len=256,
)
TINY = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=2000,
    seq_len=64,
)


def build_model(shape: dict, device: torch.device, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        **{k: v for k, v in shape.items() if k != "seq_len"}, max_position_embeddings=shape["seq_len"]
    )
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def make_batches(n_batches: int, batch_size: int, seq_len: int, vocab: int, prefix: str, seed: int) -> list:
    """Full-length examples; the first half of each is the prompt (labels -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
        labels = ids.clone()
        labels[:, : seq_len // 2] = -100
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        out.append(([f"{prefix}{b * batch_size + i}" for i in range(batch_size)], batch))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[], object], repeats: int = 1) -> tuple[float, float | None]:
    """Best-of-``repeats`` seconds and peak GPU memory (GiB) of ``fn()``."""
    best = float("inf")
    peak = None
    for _ in range(repeats):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak or 0.0, torch.cuda.max_memory_allocated() / 2**30)
    return best, peak


def train_steps(model: nn.Module, batches: list, device: torch.device, amp: torch.dtype | None) -> None:
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    for _, batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    model.eval()


def kronfluence_scores(
    model, modules, fit, seeds, cands, batch_size, device, amp, tmp: Path, eig_dtype: torch.dtype = torch.float64
) -> Callable:
    """Fit kronfluence EK-FAC factors (untimed) and return a closure timing its pairwise scoring."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class SummedLM(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            return nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    def as_dataset(batches):
        return [{k: v[i] for k, v in b.items()} for _, b in batches for i in range(b["input_ids"].shape[0])]

    logging.getLogger("kronfluence").setLevel(logging.ERROR)
    task = SummedLM()
    kf_model = prepare_model(model, task)
    analyzer = Analyzer(
        "bench", kf_model, task, cpu=device.type == "cpu", disable_tqdm=True, output_dir=str(tmp)
    )
    fargs = FactorArguments(
        strategy="ekfac", use_empirical_fisher=True, amp_dtype=amp, eigendecomposition_dtype=eig_dtype
    )
    analyzer.fit_all_factors("f", as_dataset(fit), per_device_batch_size=batch_size, factor_args=fargs)
    sargs = ScoreArguments(amp_dtype=amp)
    if amp is not None:  # kronfluence's documented low-precision settings
        sargs.per_sample_gradient_dtype = sargs.precondition_dtype = sargs.score_dtype = amp
    seed_ds, cand_ds = as_dataset(seeds), as_dataset(cands)

    def run() -> None:
        analyzer.compute_pairwise_scores(
            "s",
            "f",
            query_dataset=seed_ds,
            train_dataset=cand_ds,
            per_device_query_batch_size=len(seed_ds),
            per_device_train_batch_size=batch_size,
            score_args=sargs,
            overwrite_output_dir=True,
        )

    return run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small model and sequences (CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4, help="timed batches per phase (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--seed-rank", type=int, default=None)
    ap.add_argument("--no-kronfluence", action="store_true")
    ap.add_argument(
        "--eig-dtype",
        choices=["float64", "float32"],
        default="float64",
        help="eigendecomposition dtype of the untimed factor set-up (ours and kronfluence's): float32 "
        "saves minutes of float64 eigh on 48 large factors and changes no timed phase",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU: stable on a shared box)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    R = args.repeats
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    use_bf16 = (args.dtype or ("bf16" if device.type == "cuda" else "fp32")) == "bf16"
    amp = torch.bfloat16 if use_bf16 else None
    shape = TINY if args.tiny else FULL
    model = build_model(shape, device, torch.bfloat16 if use_bf16 else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    bs, seq = args.batch_size, shape["seq_len"]
    warm = make_batches(1, bs, seq, shape["vocab_size"], "w", 0)
    cands = make_batches(args.batches, bs, seq, shape["vocab_size"], "c", 1)
    seeds = make_batches(1, args.seeds, seq, shape["vocab_size"], "s", 2)
    n = args.batches * bs
    curv = CurvatureConfig(
        method="ekfac", autocast="bfloat16" if use_bf16 else "none", batch_size=bs, eig_dtype=args.eig_dtype
    )
    score_cfg = ScoringConfig(
        batch_size=bs, seed_rank=args.seed_rank, autocast=curv.autocast, feature_dim=1024
    )
    tracked = select_tracked_modules(model, curv)
    res: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "params_M": round(n_params / 1e6, 1),
        "tracked_layers": len(tracked),
        "batch_size": bs,
        "seq_len": seq,
        "examples_per_phase": n,
        "seeds": args.seeds,
        "dtype": "bf16" if use_bf16 else "fp32",
        "repeats": R,
        "eig_dtype": args.eig_dtype,
    }

    peaks: dict[str, float] = {}
    rounds: list[dict[str, float]] = []  # seconds per phase, one dict per interleaved round

    def measure(key: str, fn: Callable[[], object]) -> None:
        seconds, peak = timed(device, fn)
        rounds[-1][key] = seconds
        if peak is not None:
            peaks[key] = max(peaks.get(key, 0.0), peak)

    # Untimed set-up: warm-ups, the factors and preconditioned seeds that scoring needs.
    stats: dict = {}
    train_steps(model, warm, device, amp)
    eigen = eigendecompose(covariance_stats(model, warm, tracked, curv), curv)
    factors = finalize_factors(curv, list(tracked), eigen, lambda_stats(model, warm, tracked, eigen, curv))
    t_pre, _ = timed(
        device, lambda: stats.update(pre=precondition_seeds(model, seeds, factors, curv, score_cfg))
    )
    res["precondition_seconds"] = round(t_pre, 2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.parquet"
        score_shard(model, warm, stats["pre"], factors, score_cfg, out)
        # Phases interleaved round by round and compared within a round (median over rounds):
        # drifting load on a shared machine then biases no phase against another.
        for _ in range(R):
            rounds.append({})
            measure("train_step", lambda: train_steps(model, cands, device, amp))
            measure("factor_covariance", lambda: covariance_stats(model, cands, tracked, curv))
            measure("factor_lambda", lambda: lambda_stats(model, cands, tracked, eigen, curv))
            measure("scoring", lambda: score_shard(model, cands, stats["pre"], factors, score_cfg, out))
            rounds[-1]["factor_fit"] = rounds[-1]["factor_covariance"] + rounds[-1]["factor_lambda"]
        del stats["pre"]  # kronfluence holds its own preconditioned seeds: free ours first
        if not args.no_kronfluence:
            kf_model = copy.deepcopy(model)
            run = kronfluence_scores(
                kf_model, list(tracked), warm, seeds, cands, bs, device, amp, Path(tmp) / "kf",
                getattr(torch, args.eig_dtype),
            )
            run()  # warm-up
            for _ in range(R):
                rounds.append({})
                measure("train_step", lambda: train_steps(model, cands, device, amp))
                measure("kronfluence_pairwise", run)
            del kf_model, run
    keys = dict.fromkeys(k for r in rounds for k in r)
    for key in keys:
        seconds = [r[key] for r in rounds if key in r]
        res[f"{key}_ex_per_s"] = round(n / statistics.median(seconds), 3)
        if key in peaks:
            res[f"{key}_peak_gib"] = round(peaks[key], 2)
        if key != "train_step":
            ratios = sorted(r["train_step"] / r[key] for r in rounds if key in r)
            res[f"{key}_vs_train"] = round(statistics.median(ratios), 3)
            res[f"{key}_vs_train_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
    if device.type != "cuda":
        import resource

        res["process_max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
