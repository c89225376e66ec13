"""Content-addressed stage outputs with a verified manifest: the cache across flow runs.

A stage's key hashes the content of its real inputs (data hashes, checkpoint hashes), the config
fields it reads and the source of the code it runs (both derived in ``tasks.caching.stage_keys``). Its
outputs go to ``<run_dir>/cas/<stage>/<key>/`` together with ``_manifest.json`` listing every
file with its size and content digest. A hit is accepted only if every file's bytes hash to the
recorded digest, so a deleted, truncated or corrupted-in-place file means "recompute", never a
crash or a stale result. The directory is built under a temporary name and renamed into place,
so a killed run never leaves a half-written stage behind (and the next run sweeps its leftovers).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from gdig_core.integrity import digest_files, first_mismatch
from gdig_core.io import atomic_write_json, text_sha256
from gdig_core.write_faults import writing
from tasks.caching.key_derivation import source_fingerprint
from tasks.runtime.records import record

MANIFEST = "_manifest.json"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CODE_HASHES: dict[tuple[str, ...], str] = {}
# ast.parse is not thread-safe in CPython 3.11/3.12 (gh-106905: "AST constructor recursion depth
# mismatch", seen when selection tasks of a thread pool hashed code at once): files are parsed one
# at a time, and the method's modules once at import, in the importing thread.
_CODE_LOCK = threading.Lock()
_FILE_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def code_version(modules: Iterable[str]) -> str:
    """Hash of the source files a stage runs (``gdig_core/influence/curvature.py`` ...) plus the package version.

    Editing the method recomputes what it produced; editing an unrelated module, or only the
    comments and docstrings of a related one, does not (``key_derivation.source_fingerprint``).
    """
    names = tuple(sorted(set(modules)))
    if names not in _CODE_HASHES:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg = version("gdig")
        except PackageNotFoundError:
            pkg = "0"
        parts = [pkg]
        for name in names:
            path = PROJECT_ROOT / name
            parts.append(name)
            parts.append(_cached_fingerprint(path) if path.exists() else "missing")
        _CODE_HASHES[names] = text_sha256(*parts)
    return _CODE_HASHES[names]


def _cached_fingerprint(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _CODE_LOCK:
        if key not in _FILE_FINGERPRINTS:
            _FILE_FINGERPRINTS[key] = source_fingerprint(path)
        return _FILE_FINGERPRINTS[key]


for _module in sorted((PROJECT_ROOT / "gdig_core").rglob("*.py")):
    _cached_fingerprint(_module)


def stage_key(stage: str, inputs: dict[str, str], config_json: str, code: str) -> str:
    """The cache key: stage name, named input hashes, config sections and code version."""
    canon = json.dumps({"stage": stage, "inputs": inputs, "config": config_json, "code": code}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def key_of(stage: str, inputs: dict[str, str], config_json: str, code_modules: Iterable[str]) -> str:
    """The key ``run_stage`` gives these arguments, without running anything (the downstream
    cells find their outputs by it, wherever they were computed)."""
    return stage_key(stage, inputs, config_json, code_version(code_modules))


class StageOutput(BaseModel):
    """What a stage hands downstream: where its files are and their hashes (never tensors).

    A pydantic model so subflows can take it as a validated parameter.
    """

    stage: str
    key: str
    dir: str
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> content digest
    #: Outputs whose bytes are not a function of the inputs (timings, absolute paths): they are
    #: verified like the others but left out of ``digest``, so an identical recompute keeps
    #: every downstream key.
    volatile: list[str] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
    cached: bool = False
    #: Wall time of the computation that produced these outputs (whenever it ran).
    seconds: float | None = None
    #: What this run called the stage (``curvature/base``, ``finetune/gdig/b200/s0``...).
    label: str | None = None

    def path(self, name: str) -> Path:
        return Path(self.dir) / name

    def digest(self, *names: str) -> str:
        """Hash of the named output files (all of them when none are named), volatile ones left out."""
        chosen = names or tuple(sorted(self.files))
        missing = [n for n in chosen if n not in self.files and not any(f.startswith(n + "/") for f in self.files)]
        if missing:
            raise KeyError(f"stage {self.stage} has no output {missing[0]!r}")
        parts: list[str] = []
        stable = {k: v for k, v in self.files.items() if not is_volatile(k, self.volatile)}
        for n in chosen:
            if n in self.files:
                parts += [n, stable.get(n, "volatile")]
            else:  # a directory: every file under it
                parts += [f"{k}={v}" for k, v in sorted(stable.items()) if k.startswith(n + "/")]
        return text_sha256(*parts)


def is_volatile(rel: str, patterns: Iterable[str]) -> bool:
    """Whether an output path matches one of the volatile patterns (fnmatch, on the relative path)."""
    from fnmatch import fnmatch

    return any(fnmatch(rel, p) for p in patterns)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (free, same filesystem) or copy a finished work file into a stage's output."""
    import os

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_dir(run_dir: str | Path, stage: str, key: str) -> Path:
    return Path(run_dir) / "cas" / stage / key[:24]


def verify_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest if every listed file exists with its recorded content digest, else None."""
    manifest, _ = check_manifest(root)
    return manifest


def check_manifest(root: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)`` when every listed file hashes to its recorded digest; else
    ``(None, why)``, ``why`` naming the file (None when there is no manifest at all)."""
    root = Path(root)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, f"{path}: unreadable manifest ({err})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or any(not isinstance(m, dict) or "digest" not in m for m in files.values()):
        return None, f"{path}: no content digests recorded (written by an older gdig?)"
    problem = first_mismatch(root, files)
    if problem is not None:
        return None, problem
    return manifest, None


def stage_output(
    stage: str, key: str, root: Path, manifest: dict[str, Any], cached: bool, label: str | None = None
) -> StageOutput:
    files = {rel: meta["digest"] for rel, meta in manifest["files"].items()}
    return StageOutput(stage=stage, key=key, dir=str(root), files=files, volatile=manifest.get("volatile", []),
                       summary=manifest.get("summary", {}), cached=cached, seconds=manifest.get("seconds"),
                       label=label or stage)


def lookup(run_dir: str | Path, stage: str, key: str, label: str | None = None) -> StageOutput | None:
    """The verified cached output of this key, or None; a corrupt one is logged and recorded."""
    root = stage_dir(run_dir, stage, key)
    manifest, problem = check_manifest(root)
    if manifest is not None and manifest.get("key") != key:
        manifest, problem = None, f"{root / MANIFEST}: records key {manifest.get('key')}, expected {key}"
    if problem is not None:
        from tasks.runtime import artifacts

        artifacts.logger().warning("%s: cached output will be recomputed: %s", label or stage, problem)
        record("cache_corrupt", label or stage, key=key, reason=problem)
    if manifest is None:
        return None
    return stage_output(stage, key, root, manifest, cached=True, label=label)


def sweep_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove what killed runs left in ``cas/`` and ``store/`` (the result store): stage
    directories being built (``.<key>.*.tmp``) and half-written files (``.<name>.*.tmp``). Only
    safe while this process holds the run directory's lock (``tasks.runtime.run_lock``): nobody else is
    writing there."""
    removed: list[Path] = []
    for root in (Path(run_dir) / "cas", Path(run_dir) / "store"):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def run_stage(
    run_dir: str | Path,
    stage: str,
    inputs: dict[str, str],
    config_json: str,
    code_modules: Iterable[str],
    compute: Callable[[Path, Path], dict[str, Any] | None],
    label: str | None = None,
    volatile: Iterable[str] = (),
    record_fields: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None,
) -> StageOutput:
    """Return the verified cached output of this stage, or compute it into a fresh directory.

    ``compute(out_dir, work_dir)`` writes its results into ``out_dir`` and returns a JSON-able
    summary. ``work_dir`` is keyed like the output but survives a killed run (shard outputs,
    training checkpoints), so a rerun resumes there; it is removed once the stage is complete.
    ``label`` distinguishes several runs of one stage (``selection/gdig/b100``) in the records.
    ``volatile`` names output files (fnmatch patterns) whose bytes vary between identical runs:
    they are left out of the output's ``digest``. ``record_fields(summary, cached)`` adds fields
    to the stage's ``computed``/``cached`` record (the scoring stage: rows computed and reused).
    """
    code = code_version(code_modules)
    key = key_of(stage, inputs, config_json, code_modules)
    name = label or stage
    hit = lookup(run_dir, stage, key, name)
    if hit is not None:
        record("cached", name, key=key, **(record_fields(hit.summary, True) if record_fields else {}))
        return hit
    final = stage_dir(run_dir, stage, key)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    work = final.with_name(final.name + ".work")
    with writing(tmp):
        tmp.mkdir(parents=True)
        work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        # Outputs written without atomic_path (checkpoints, models) name the stage when the disk fails.
        with writing(tmp, permission=False):
            summary = compute(tmp, work) or {}
        files = digest_files(tmp, [p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                                   if p.is_file() and p.name != MANIFEST])
        manifest = {
            "stage": stage, "key": key, "inputs": inputs, "code": code, "files": files,
            "volatile": sorted(volatile), "summary": summary, "created": time.time(),
            "seconds": round(time.time() - t0, 3),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        with writing(final):
            if final.exists():  # a stale directory whose manifest no longer verified
                shutil.rmtree(final)
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    record("computed", name, key=key, seconds=manifest["seconds"],
           **(record_fields(manifest["summary"], False) if record_fields else {}))
    return stage_output(stage, key, final, manifest, cached=False, label=name)
