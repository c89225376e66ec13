"""Pinned stage outputs (``pin:`` in the config): a reference model and curvature factors reused
from an earlier run instead of being fitted on this run's pool, so a scheduled run over a grown
pool keeps them (and with them every stored per-candidate result).

A pin names a stage output directory and the hash it must have. It is refused, with the config
key and both hashes, when the directory is not that stage's output, when any file differs from
the directory's manifest, or when the manifest's content does not hash to the pinned value. The
hash is the one later stages' keys use (``StageOutput.digest``), so a pinned run reuses exactly
what the run that produced the pin computed. ``gdig pins RUN_DIR`` prints the pins of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdig_core.config import ConfigError, GdigConfig, PinnedStage
from tasks.caching.stage_cache import MANIFEST, StageOutput, check_manifest, stage_output
from tasks.stages.files import required_factor_files

#: What a pin's hash covers, per stage: the reference model directory, every factor file.
_HASHED = {"reference": ("model",), "curvature": ()}


class PinError(ConfigError):
    """A pinned stage output that cannot be used as it is; names the config key."""


def pinned_output(pin: PinnedStage, stage: str, key: str, verify_bytes: bool = True) -> StageOutput:
    """The stage output a pin names, after checking it is ``stage``'s, that its hash is the pinned
    one and (``verify_bytes``) that every file still matches its manifest."""
    root = Path(pin.dir)
    if verify_bytes:
        manifest, problem = check_manifest(root)
    else:
        try:
            manifest, problem = json.loads((root / MANIFEST).read_text(encoding="utf-8")), None
        except FileNotFoundError:
            manifest, problem = None, None
        except (OSError, ValueError) as err:
            manifest, problem = None, f"{root / MANIFEST}: unreadable manifest ({err})"
    if manifest is None:
        raise PinError(f"{key}.dir: {problem or f'{root} holds no {MANIFEST}: not a gdig stage output'}")
    if manifest.get("stage") != stage:
        raise PinError(f"{key}.dir: {root} is a {manifest.get('stage')!r} stage output, not {stage!r}")
    out = stage_output(stage, manifest["key"], root, manifest, cached=True)
    digest = out.digest(*_HASHED[stage])
    if digest != pin.hash:
        raise PinError(f"{key}.hash: {root} hashes to {digest}, not the pinned {pin.hash}: refusing to use it "
                       "(pin the hash `gdig pins` prints for that run, or remove the pin to fit anew)")
    return out


def check_pins(cfg: GdigConfig, verify_bytes: bool = True) -> None:
    """Refuse a run whose pins do not verify, before any stage runs."""
    if cfg.pin.reference is not None:
        pinned_output(cfg.pin.reference, "reference", "pin.reference", verify_bytes)
    for label, pin in cfg.pin.factors.items():
        out = pinned_output(pin, "curvature", f"pin.factors.{label}", verify_bytes)
        missing = [f for f in required_factor_files(cfg) if f not in out.files]
        if missing:
            raise PinError(f"pin.factors.{label}: {pin.dir} lacks {missing} (fitted with other score variants, or "
                           "without scoring.store.enabled): pin a factor set fitted with these settings")


def pinned_reference(cfg: GdigConfig) -> tuple[str, str]:
    """(model directory, hash) of the pinned reference model."""
    assert cfg.pin.reference is not None
    # check_pins verified every byte when the run began
    out = pinned_output(cfg.pin.reference, "reference", "pin.reference", verify_bytes=False)
    return str(out.path("model")), out.digest("model")


def pinned_factors(cfg: GdigConfig, label: str, model: tuple[str, str]) -> StageOutput:
    """The pinned curvature output of scoring model ``label``; refused when it was fitted at
    another model than ``model`` (path, hash)."""
    out = pinned_output(cfg.pin.factors[label], "curvature", f"pin.factors.{label}", verify_bytes=False)
    manifest = json.loads((Path(out.dir) / MANIFEST).read_text(encoding="utf-8"))
    fitted_at = manifest.get("inputs", {}).get("reference")
    if fitted_at != model[1]:
        raise PinError(f"pin.factors.{label}: fitted at model {fitted_at}, but this run scores at {model[1]} "
                       f"({model[0]}): pin the reference model too (pin.reference), or these factors' own model")
    return out


def pins_of(cfg: GdigConfig, reference: tuple[str, str], factors: dict[str, StageOutput]) -> dict[str, Any]:
    """The ``pin:`` section that reuses this run's reference model and curvature factors (``gdig
    pins RUN_DIR`` prints it; a scheduled run over a grown pool then scores its new rows only)."""
    pin: dict[str, Any] = {}
    model_dir = Path(reference[0]).parent
    if cfg.reference.enabled and (model_dir / MANIFEST).exists():
        pin["reference"] = {"dir": str(model_dir), "hash": reference[1]}
    if factors:
        pin["factors"] = {label: {"dir": out.dir, "hash": out.digest(*_HASHED["curvature"])}
                          for label, out in factors.items()}
    return pin
