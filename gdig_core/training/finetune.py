"""Finetune a causal LM on translation pairs with the prompt mask (full or LoRA).

Used for the reference model (step 1) and the downstream models (step 7). The loss is the
token-level cross-entropy of the target tokens (prompt masked, ``encoding.encode_pairs``),
averaged over every target token of an optimizer step (all its accumulated micro-batches).

Resuming: checkpoints (``checkpointing``) go to ``<out_dir>.checkpoints/`` beside the output.
Calling :func:`finetune` again with the same inputs after an interruption continues from the
latest checkpoint and ends with the same weights as an uninterrupted run. The data order is a
pure function of the seed and the epoch, so the checkpoint records only the position in it.

Output: ``out_dir`` is a normal Hugging Face checkpoint (model + tokenizer; a LoRA adapter is
merged into the base weights) with ``training_summary.json``, written atomically: a temp dir
beside it is renamed into place only when everything is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from gdig_core.config import GdigConfig, TrainConfig
from gdig_core.data.encoding import IGNORE_INDEX, EncodedPair, collate, encode_pairs, length_batches
from gdig_core.io import atomic_write_json, staging_dir, text_sha256
from gdig_core.training.checkpointing import (
    TrainProgress,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

#: A progress line (step, loss, examples/s, time left) at most this often.
PROGRESS_LOG_SECONDS = 30.0
#: Called after every optimizer step (after any checkpoint of that step) with (step, loss).
StepCallback = Callable[[int, float], None]


def checkpoint_root(out_dir: str | Path) -> Path:
    """Where resume checkpoints of a run writing ``out_dir`` live."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.checkpoints"


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at a step: linear warmup, then linear/cosine decay to
    zero at ``total`` (or constant)."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return fn


def use_bf16(train_cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast only on CUDA; ``bf16=None`` means: when the GPU supports it."""
    if device.type != "cuda":
        if train_cfg.bf16:
            log.warning("train.bf16 is ignored on %s: CPU training runs in float32", device)
        return False
    if train_cfg.bf16 is None:
        return torch.cuda.is_bf16_supported()
    return bool(train_cfg.bf16)


def apply_lora(model: Any, train_cfg: TrainConfig) -> Any:
    """Wrap ``model`` with a LoRA adapter per ``train_cfg.lora`` (peft); base weights frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = train_cfg.lora
    assert lora is not None
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, peft_cfg)


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def target_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Summed next-token cross-entropy over the target (non -100) tokens of a batch.

    Logits are computed only from the first target position on (``hooks.example_losses``): with
    a 262k vocabulary the LM head dominates a small model's step, and the prompt needs none
    (measured on Gemma-3-270M, CPU, LoRA: 1.24 -> 1.6 examples/s, identical losses).
    """
    from gdig_core.training.losses import example_losses

    loss_sum, _ = example_losses(model, batch, autocast_dtype=autocast_dtype)
    return loss_sum.sum()


def _fingerprint(cfg: GdigConfig, train_cfg: TrainConfig, pairs: pa.Table, base: str) -> str:
    """Identity of a training run: a checkpoint from any other run must not be resumed."""
    from gdig_core.data.pairs import table_sha256

    # How often checkpoints are written does not change the result: not part of the identity.
    train = train_cfg.model_dump_json(exclude={"save_every", "save_every_minutes", "keep_checkpoints"})
    return text_sha256(train, cfg.section_json("prompt", "model"), table_sha256(pairs), base)


def _finished(out: Path, fingerprint: str) -> bool:
    """Whether ``out`` is the complete result of the run with this fingerprint."""
    summary = out / "training_summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}.tmp"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _epoch_groups(encoded: list[EncodedPair], train_cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """The optimizer steps of an epoch: lists of micro-batches (lists of example indices)."""
    batches = length_batches(encoded, train_cfg.batch_size, seed=train_cfg.seed + epoch)
    acc = train_cfg.grad_accum
    return [batches[i : i + acc] for i in range(0, len(batches), acc)]


def finetune(
    cfg: GdigConfig,
    train_cfg: TrainConfig,
    pairs: pa.Table,
    out_dir: str | Path,
    base_model: str | Path | None = None,
    *,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> Path:
    """Finetune ``base_model`` (or ``cfg.model``) on ``pairs`` and write an HF checkpoint to ``out_dir``.

    ``pairs`` is a pair table (id, src_lang, tgt_lang, src, tgt). Full finetuning, or LoRA when
    ``train_cfg.lora`` is set (merged into the weights of the final checkpoint). AdamW with
    warmup then linear/cosine decay, gradient accumulation, gradient clipping, bf16 autocast on
    CUDA (fp32 on CPU), optional gradient checkpointing, fixed seed. Resumes from the latest
    matching checkpoint in :func:`checkpoint_root`; checkpoints are deleted after success. When
    ``out_dir`` already holds the finished result of the same run (same config, data and base
    model), it is returned as is; a different run's output there is replaced. Returns ``out_dir``.
    """
    from gdig_core.training.models import load_model, resolve_device

    wall_start = time.perf_counter()
    out = Path(out_dir)
    if pairs.num_rows == 0:
        raise ValueError("finetune: no training pairs")
    base = str(base_model) if base_model is not None else cfg.model.name
    fingerprint = _fingerprint(cfg, train_cfg, pairs, base)
    if _finished(out, fingerprint):
        log.info("finetune: %s already holds this run's result; not training again", out)
        return out
    device = resolve_device(cfg.model.device)
    set_seed(train_cfg.seed)
    model, tokenizer = load_model(cfg.model, path=base_model, device=device)
    encoded = encode_pairs(tokenizer, pairs.to_pylist(), cfg)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if train_cfg.lora is not None:
        model = apply_lora(model, train_cfg)
    model.train()
    bf16 = use_bf16(train_cfg, device)
    amp = torch.bfloat16 if bf16 else None

    steps_per_epoch = len(_epoch_groups(encoded, train_cfg, 0))
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
    warmup = math.ceil(train_cfg.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_cfg.lr_schedule, warmup, total_steps))

    ckpt_root = checkpoint_root(out)
    state = TrainProgress()
    resumed_from = None
    ckpt = resume_checkpoint(ckpt_root, fingerprint)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        resumed_from = state.step
        log.info("resuming from %s (step %d of %d)", ckpt, state.step, total_steps)

    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "finetune: %d pairs, %d steps (%d per epoch), %d trainable params, device %s, bf16 %s",
        len(encoded), total_steps, steps_per_epoch, n_trainable, device, bf16,
    )
    bar = tqdm(total=total_steps, initial=state.step, desc="finetune", unit="step", disable=not progress)
    session_examples = 0
    session_tokens = 0
    session_start = last_save = last_log = time.perf_counter()
    try:
        while state.step < total_steps:
            groups = _epoch_groups(encoded, train_cfg, state.epoch)
            while state.group < len(groups) and state.step < total_steps:
                t0 = time.perf_counter()
                micro = [collate([encoded[i] for i in idx], pad_id) for idx in groups[state.group]]
                n_target = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
                step_loss = 0.0
                for batch in micro:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = target_loss_sum(model, batch, amp) / max(n_target, 1)
                    loss.backward()
                    step_loss += float(loss.detach())
                if not math.isfinite(step_loss):
                    # Continuing would silently write a broken model; the last checkpoint is intact.
                    raise FloatingPointError(
                        f"finetune: loss is {step_loss} at step {state.step + 1} (learning rate too high, "
                        "or fp16/bf16 overflow); lower train.learning_rate or disable train.bf16"
                    )
                if train_cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], train_cfg.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                n_examples = sum(b["input_ids"].shape[0] for b in micro)
                n_tokens = sum(int(b["attention_mask"].sum()) for b in micro)
                state.step += 1
                state.group += 1
                state.examples_seen += n_examples
                state.tokens_seen += n_tokens
                state.train_seconds += time.perf_counter() - t0
                state.losses.append(step_loss)
                session_examples += n_examples
                session_tokens += n_tokens
                elapsed = max(time.perf_counter() - session_start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", ex_s=f"{session_examples / elapsed:.1f}",
                                tok_s=f"{session_tokens / elapsed:.0f}")
                epoch_end = state.group >= len(groups)
                if epoch_end:
                    state.epoch += 1
                    state.group = 0
                due = (
                    state.step % train_cfg.save_every == 0 if train_cfg.save_every else epoch_end
                )
                minutes = train_cfg.save_every_minutes
                if minutes is not None and time.perf_counter() - last_save >= 60 * minutes:
                    due = True
                if due and state.step < total_steps:
                    save_checkpoint(ckpt_root, model, optimizer, scheduler, state, fingerprint,
                                    keep=train_cfg.keep_checkpoints)
                    last_save = time.perf_counter()
                if time.perf_counter() - last_log >= PROGRESS_LOG_SECONDS or state.step == total_steps:
                    # Long CPU runs take minutes: say where they are even without a progress bar.
                    last_log = time.perf_counter()
                    rate = session_examples / elapsed
                    left = (total_steps - state.step) * elapsed / max(state.step - (resumed_from or 0), 1)
                    log.info("finetune: step %d/%d, loss %.4f, %.2f examples/s, about %.0f s left",
                             state.step, total_steps, step_loss, rate, left)
                if on_step is not None:
                    on_step(state.step, step_loss)
                if epoch_end:
                    break
    finally:
        bar.close()
    session_seconds = time.perf_counter() - session_start

    if train_cfg.lora is not None:
        model = model.merge_and_unload()
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.eval()

    tail = state.losses[-10:]
    summary: dict[str, Any] = {
        "steps": state.step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": state.step / steps_per_epoch,
        "final_loss": state.losses[-1] if state.losses else None,
        "final_loss_mean10": sum(tail) / len(tail) if tail else None,
        "first_loss": state.losses[0] if state.losses else None,
        "losses": state.losses,
        "n_pairs": len(encoded),
        "n_truncated": sum(e.truncated for e in encoded),
        "examples_seen": state.examples_seen,
        "tokens_seen": state.tokens_seen,
        "train_seconds": state.train_seconds,
        "examples_per_s": state.examples_seen / state.train_seconds if state.train_seconds else None,
        "tokens_per_s": state.tokens_seen / state.train_seconds if state.train_seconds else None,
        "this_process": {
            "examples_per_s": session_examples / session_seconds if session_seconds else None,
            "train_seconds": session_seconds,
            "wall_seconds": None,  # filled in below
        },
        "resumed_from_step": resumed_from,
        "base_model": base,
        "lora": train_cfg.lora.model_dump() if train_cfg.lora is not None else None,
        "device": str(device),
        "bf16_autocast": bf16,
        "trainable_params": n_trainable,
        "train_config": train_cfg.model_dump(mode="json"),
        "fingerprint": fingerprint,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        summary["this_process"]["wall_seconds"] = time.perf_counter() - wall_start
        atomic_write_json(tmp / "training_summary.json", summary)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    log.info("finetune: wrote %s (final loss %.4f)", out, summary["final_loss"] or float("nan"))
    return out
