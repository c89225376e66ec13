"""A dispatched cell's outputs on shared storage: its finetune and evaluation stage directories
(each with its verified ``_manifest.json``) in one tar file, written under a temporary name and
moved into place, then its ``.done.json`` sidecar with the tar's size and content digest
(``tasks.sharding.jobs``, as for shards). The pipeline takes it only when its bytes hash to that
digest, and moves each stage directory into its run directory's cache under its key."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

from tasks.caching.stage_cache import verify_manifest
from tasks.sharding import storage
from tasks.sharding.jobs import mark_done
from tasks.stages.cells import CellResult

#: The stages a cell's tar may hold, and the form of their key directories.
_STAGES = ("finetune", "evaluation")
_KEY_DIR = re.compile(r"[0-9a-f]{24}")


def pack_cell(result: CellResult, output: str, summary: dict[str, Any], scratch: Path) -> None:
    """Write the cell's stage directories to ``output`` as one tar, then its sidecar."""
    tar_path = scratch / "cell.tar"
    with tarfile.open(tar_path, "w") as tar:
        for out in (result.model, result.evaluation):
            if out is not None:
                tar.add(out.dir, arcname=f"{out.stage}/{Path(out.dir).name}")
    storage.put_file(tar_path, output)
    mark_done(tar_path, output, summary)
    tar_path.unlink()


def import_cell(run_dir: str, output: str) -> list[str]:
    """Move the stage directories of a verified cell tar into ``<run_dir>/cas`` (a directory
    already there and verifying is kept); returns the ``stage/key`` names it holds. The caller
    has checked the sidecar (``read_done``)."""
    cas = Path(run_dir) / "cas"
    # Hidden and .tmp: the sweep of a killed run's leftovers removes it (stage_cache.sweep_temporaries).
    tmp = cas / f".cell-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    names: list[str] = []
    try:
        local = storage.fetch(output, tmp / "fetched")
        with tarfile.open(local) as tar:
            tar.extractall(tmp / "x", filter="data")  # no absolute paths, links or ".." out of it
        for stage_dir in sorted((tmp / "x").iterdir()):
            for key_dir in sorted(stage_dir.iterdir()):
                if stage_dir.name not in _STAGES or not _KEY_DIR.fullmatch(key_dir.name):
                    raise ValueError(f"{output}: unexpected entry {stage_dir.name}/{key_dir.name} in a cell's outputs")
                names.append(f"{stage_dir.name}/{key_dir.name}")
                final = cas / stage_dir.name / key_dir.name
                if verify_manifest(final) is not None:
                    continue
                final.parent.mkdir(parents=True, exist_ok=True)
                staged = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
                os.replace(key_dir, staged)
                if final.exists():  # a stale directory whose manifest no longer verified
                    shutil.rmtree(final)
                os.replace(staged, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names
