"""Resume checkpoints for finetuning: trainable weights, AdamW state, LR schedule, RNG states and
the data-order position, in safetensors + JSON (no pickle).

A checkpoint is a directory ``checkpoint-00000120`` written atomically (temp dir, then rename)
with a ``manifest.json`` of its files' sizes and content digests, written last. Resuming takes
the newest checkpoint whose files still hash to their manifest; a corrupted or truncated one is
reported by file name, removed, and the one before it is used (two are kept by default).
Restoring all of it makes a resumed run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gdig_core.integrity import digest_files, first_mismatch, reading
from gdig_core.io import atomic_write_json, staging_dir

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")


@dataclass
class TrainProgress:
    """Where training stands: optimizer steps done and the position in the data order."""

    step: int = 0
    epoch: int = 0
    #: Index of the next accumulation group (optimizer step) within ``epoch``.
    group: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    #: Training seconds (forward/backward/step) summed over every process that worked on the run.
    train_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _json_safe(obj: Any) -> Any:
    """JSON form of scheduler/optimizer hyper-parameters (tuples to lists; tensors to floats)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    # Callables (lr lambdas) are rebuilt from the config, never stored.
    return None


def save_checkpoint(
    ckpt_root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: TrainProgress,
    fingerprint: str,
    keep: int = 2,
) -> Path:
    """Write ``ckpt_root/checkpoint-<step>`` atomically and prune to the ``keep`` latest (keep two
    or more so that a checkpoint corrupted on disk still leaves one to resume from)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{CHECKPOINT_PREFIX}{progress.step:08d}"
    tmp = staging_dir(final)
    try:
        params = _trainable(model)
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))

        opt_state = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        for idx, state in opt_state["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{key}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))

        rng: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = state
        np_state = np.random.get_state()
        rng["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
        save_file(rng, str(tmp / "rng.safetensors"))

        py_state = random.getstate()
        atomic_write_json(
            tmp / "trainer_state.json",
            {
                "fingerprint": fingerprint,
                "progress": asdict(progress),
                "optimizer": {"param_groups": _json_safe(opt_state["param_groups"]), "scalars": scalars},
                "scheduler": _json_safe(scheduler.state_dict()),
                "rng": {
                    "python": [py_state[0], list(py_state[1]), py_state[2]],
                    "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                },
            },
        )
        atomic_write_json(tmp / MANIFEST, {"files": digest_files(tmp, _FILES)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoint directories under ``ckpt_root`` (complete or not: see ``checkpoint_problem``),
    oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: p.name)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (naming the file), or None when every file hashes to
    its manifest."""
    manifest_path = ckpt / MANIFEST
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"{manifest_path}: missing (an incomplete checkpoint, or one written by an older gdig)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest_path}: unreadable ({type(err).__name__}: {err})"
    if set(files) != set(_FILES):
        return f"{manifest_path}: lists {sorted(files)}, expected {sorted(_FILES)}"
    return first_mismatch(ckpt, files)


def resume_checkpoint(ckpt_root: Path, fingerprint: str) -> Path | None:
    """The newest intact checkpoint of the run with this fingerprint, or None.

    Corrupt checkpoints are logged by file and removed; the one before is tried next. When the
    newest intact one belongs to another run (config, data or model changed), all are removed.
    """
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            log.warning("checkpoint %s is corrupt and is discarded (%s); trying the previous one", ckpt.name, problem)
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        if read_fingerprint(ckpt) != fingerprint:
            log.warning("discarding checkpoints in %s: they belong to a different run (config/data/model)", ckpt_root)
            shutil.rmtree(ckpt_root, ignore_errors=True)
            return None
        return ckpt
    return None


def read_fingerprint(ckpt: Path) -> str:
    path = ckpt / "trainer_state.json"
    with reading(path, "checkpoint state"):
        return json.loads(path.read_text(encoding="utf-8"))["fingerprint"]


def load_checkpoint(
    ckpt: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainProgress:
    """Restore weights, optimizer, scheduler and RNG states from ``ckpt``; return the progress.

    Call it last, right before the training loop, so nothing consumes random numbers between the
    restore and the first resumed step.
    """
    with reading(ckpt / "trainer_state.json", "checkpoint state"):
        meta = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    params = _trainable(model)
    saved = _load_tensors(ckpt / "trainable.safetensors")
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise RuntimeError(f"checkpoint {ckpt} does not match the model (missing {missing[:3]}, extra {extra[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(device=p.device, dtype=p.dtype))

    tensors = _load_tensors(ckpt / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["optimizer"]["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})

    sched = {k: v for k, v in meta["scheduler"].items() if k != "lr_lambdas"}
    scheduler.load_state_dict({**scheduler.state_dict(), **sched})

    rng = _load_tensors(ckpt / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    py = meta["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((kind, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    return TrainProgress(**meta["progress"])


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    with reading(path, "checkpoint file"):
        return load_file(str(path))

