"""Content-addressed stage outputs with a verified manifest: the cache across flow runs.

A stage's key hashes the content of its real inputs (data hashes, checkpoint hashes), the config
sections it reads (``GdigConfig.section_json``) and the source of the code it runs. Its outputs go
to ``<run_dir>/cas/<stage>/<key>/`` together with ``_manifest.json`` listing every file with its
size and sha256. A hit is accepted only if the manifest verifies, so a deleted or truncated file
means "recompute", never a crash or a stale result. The directory is built under a temporary
name and renamed into place, so a killed run never leaves a half-written stage behind.
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

from gdig_core.io import atomic_write_json, file_sha256, text_sha256
from tasks.records import record

MANIFEST = "_manifest.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CODE_HASHES: dict[tuple[str, ...], str] = {}
# ast.parse is not thread-safe in CPython 3.11/3.12 (gh-106905: "AST constructor recursion depth
# mismatch", seen when selection tasks of a thread pool hashed code at once): files are parsed one
# at a time, and the method's modules once at import, in the importing thread.
_CODE_LOCK = threading.Lock()
_FILE_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def code_version(modules: Iterable[str]) -> str:
    """Hash of the source files a stage runs (``gdig_core/curvature.py`` ...) plus the package version.

    Editing the method recomputes what it produced; editing an unrelated module, or only the
    comments and docstrings of a related one, does not.
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


def _source_fingerprint(path: Path) -> str:
    """Hash of a module's syntax tree without docstrings: reformatting or editing comments and
    docs does not invalidate results, any change to the code does."""
    import ast

    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text_sha256(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return text_sha256(ast.dump(tree, annotate_fields=False))


def _cached_fingerprint(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _CODE_LOCK:
        if key not in _FILE_FINGERPRINTS:
            _FILE_FINGERPRINTS[key] = _source_fingerprint(path)
        return _FILE_FINGERPRINTS[key]


for _module in sorted((PROJECT_ROOT / "gdig_core").glob("*.py")):
    _cached_fingerprint(_module)


def stage_key(stage: str, inputs: dict[str, str], config_json: str, code: str) -> str:
    """The cache key: stage name, named input hashes, config sections and code version."""
    canon = json.dumps({"stage": stage, "inputs": inputs, "config": config_json, "code": code}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


class StageOutput(BaseModel):
    """What a stage hands downstream: where its files are and their hashes (never tensors).

    A pydantic model so subflows can take it as a validated parameter.
    """

    stage: str
    key: str
    dir: str
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    summary: dict[str, Any] = Field(default_factory=dict)
    cached: bool = False
    #: Wall time of the computation that produced these outputs (whenever it ran).
    seconds: float | None = None
    label: str | None = None

    def path(self, name: str) -> Path:
        return Path(self.dir) / name

    def digest(self, *names: str) -> str:
        """Hash of the named output files (all of them when none are named)."""
        chosen = names or tuple(sorted(self.files))
        missing = [n for n in chosen if n not in self.files and not any(f.startswith(n + "/") for f in self.files)]
        if missing:
            raise KeyError(f"stage {self.stage} has no output {missing[0]!r}")
        parts: list[str] = []
        for n in chosen:
            if n in self.files:
                parts += [n, self.files[n]]
            else:  # a directory: every file under it
                parts += [f"{k}={v}" for k, v in sorted(self.files.items()) if k.startswith(n + "/")]
        return text_sha256(*parts)


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


def _scan(root: Path, old: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Size, mtime and sha256 of every file under ``root`` (reusing ``old`` hashes when unchanged)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == MANIFEST:
            continue
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        prev = (old or {}).get(rel)
        if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
            sha = prev["sha256"]
        else:
            sha = file_sha256(p)
        out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    return out


def verify_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest if every listed file exists with its recorded content, else None.

    Size and mtime unchanged count as verified; otherwise the file is re-hashed, so a copied
    directory (new mtimes, same bytes) still hits while an edited or truncated file misses.
    """
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for rel, meta in manifest.get("files", {}).items():
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            return None
        if st.st_size != meta["size"]:
            return None
        if st.st_mtime_ns != meta["mtime_ns"] and file_sha256(p) != meta["sha256"]:
            return None
    return manifest


def _output(
    stage: str, key: str, root: Path, manifest: dict[str, Any], cached: bool, label: str | None = None
) -> StageOutput:
    files = {rel: meta["sha256"] for rel, meta in manifest["files"].items()}
    return StageOutput(stage=stage, key=key, dir=str(root), files=files, summary=manifest.get("summary", {}), cached=cached,
                       seconds=manifest.get("seconds"), label=label or stage)


def lookup(run_dir: str | Path, stage: str, key: str, label: str | None = None) -> StageOutput | None:
    root = stage_dir(run_dir, stage, key)
    manifest = verify_manifest(root)
    if manifest is None or manifest.get("key") != key:
        return None
    return _output(stage, key, root, manifest, cached=True, label=label)


def run_stage(
    run_dir: str | Path,
    stage: str,
    inputs: dict[str, str],
    config_json: str,
    code_modules: Iterable[str],
    compute: Callable[[Path, Path], dict[str, Any] | None],
    label: str | None = None,
) -> StageOutput:
    """Return the verified cached output of this stage, or compute it into a fresh directory.

    ``compute(out_dir, work_dir)`` writes its results into ``out_dir`` and returns a JSON-able
    summary. ``work_dir`` is keyed like the output but survives a killed run (shard outputs,
    training checkpoints), so a rerun resumes there; it is removed once the stage is complete.
    ``label`` distinguishes several runs of one stage (``selection/gdig/b100``) in the records.
    """
    code = code_version(code_modules)
    key = stage_key(stage, inputs, config_json, code)
    name = label or stage
    hit = lookup(run_dir, stage, key, name)
    if hit is not None:
        record("cached", name, key=key)
        return hit
    final = stage_dir(run_dir, stage, key)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    work = final.with_name(final.name + ".work")
    tmp.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        summary = compute(tmp, work) or {}
        files = _scan(tmp)
        manifest = {
            "stage": stage, "key": key, "inputs": inputs, "code": code, "files": files,
            "summary": summary, "created": time.time(), "seconds": round(time.time() - t0, 3),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        if final.exists():  # a stale directory whose manifest no longer verified
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    # mtimes survive a rename, so the manifest written in tmp still verifies in place.
    record("computed", name, key=key, seconds=manifest["seconds"])
    return _output(stage, key, final, manifest, cached=False, label=name)
