"""Caching across flow runs: stage keys hash the real inputs, so a rerun recomputes exactly what
depends on a change. Real pipeline processes on the tiny config against a real Prefect server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from prefect_fixtures import copy_run, run_pipeline, selected_ids

from tasks.caching.stage_cache import run_stage, verify_manifest

UPSTREAM = ["data", "base-model", "reference", "curvature"]
ALL = ["data", "base-model", "reference", "curvature", "precondition", "scoring", "selection", "finetune",
       "evaluation", "report"]


def _computed(run) -> set[str]:
    return {r["stage"].split("/")[0] for r in run.events("computed")}


def _cached(run) -> set[str]:
    return {r["stage"].split("/")[0] for r in run.events("cached")}


# ---------------------------------------------------------------- unit: the manifest check


def test_stage_cache_hit_verify_and_recompute(tmp_path: Path) -> None:
    calls = []

    def compute(out: Path, work: Path) -> dict:
        calls.append(1)
        (out / "a.txt").write_text("hello")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"\x00" * 10)
        return {"n": 2}

    first = run_stage(tmp_path, "demo", {"x": "1"}, "{}", [], compute)
    again = run_stage(tmp_path, "demo", {"x": "1"}, "{}", [], compute)
    assert (first.cached, again.cached, len(calls)) == (False, True, 1)
    assert again.summary == {"n": 2} and again.files == first.files
    # A deleted output means recompute, not a crash and not a stale hit.
    (Path(again.dir) / "sub" / "b.bin").unlink()
    assert verify_manifest(again.dir) is None
    third = run_stage(tmp_path, "demo", {"x": "1"}, "{}", [], compute)
    assert not third.cached and len(calls) == 2 and (Path(third.dir) / "sub" / "b.bin").exists()
    # An edited file (same size, new content, old mtime restored) misses too.
    edited = Path(third.dir) / "a.txt"
    stamp = edited.stat()
    edited.write_text("HELLO")
    os.utime(edited, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert verify_manifest(third.dir) is None
    assert not run_stage(tmp_path, "demo", {"x": "1"}, "{}", [], compute).cached and len(calls) == 3
    # A different input hash is a different key and directory.
    other = run_stage(tmp_path, "demo", {"x": "2"}, "{}", [], compute)
    assert other.key != first.key and other.dir != first.dir


def test_failed_stage_leaves_nothing(tmp_path: Path) -> None:
    def boom(out: Path, work: Path) -> dict:
        (out / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "demo", {}, "{}", [], boom)
    leftovers = [p for p in (tmp_path / "cas" / "demo").iterdir() if not p.name.endswith(".work")]
    assert leftovers == []


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_rerun_recomputes_only_what_changed(prefect_server, baseline_run, tmp_path: Path, data_dir: Path) -> None:
    base = baseline_run
    assert _computed(base) >= {"data", "base-model", "reference", "curvature", "precondition", "scoring",
                               "selection", "report"}
    run_dir = copy_run(base.run_dir, tmp_path / "run", ALL)

    # 1. Identical rerun in a copy of the run: nothing is recomputed but the report, which prints
    #    the config and the command (both name the new run directory); the selection is the same.
    same = run_pipeline(prefect_server, run_dir)
    assert same.returncode == 0, same.output[-4000:]
    assert _computed(same) == {"report"}, same.events("computed")
    assert selected_ids(run_dir) == selected_ids(base.run_dir)

    # 2. A different seed file: seed preconditioning, scoring and later stages are recomputed,
    #    the reference model and the curvature factors are not.
    seed_file = tmp_path / "seed.tsv"
    lines = (data_dir / "de-en" / "flores.dev.tsv").read_text(encoding="utf-8").splitlines()
    seed_file.write_text("\n".join(lines[100:140]) + "\n", encoding="utf-8")
    new_seed = run_pipeline(prefect_server, run_dir, [f"data.seed.path={seed_file}"])
    assert new_seed.returncode == 0, new_seed.output[-4000:]
    assert {"precondition", "scoring", "selection"} <= _computed(new_seed)
    assert {"base-model", "reference", "curvature"} <= _cached(new_seed)
    assert not {"base-model", "reference", "curvature"} & _computed(new_seed)

    # 3. Only the k-means K changes: selection and later only.
    new_k = run_pipeline(prefect_server, run_dir, [f"data.seed.path={seed_file}", "selection.n_clusters=2"])
    assert new_k.returncode == 0, new_k.output[-4000:]
    assert "selection" in _computed(new_k)
    assert _computed(new_k) <= {"selection", "finetune", "evaluation", "report"}
    assert {"data", "base-model", "reference", "curvature", "precondition", "scoring"} <= _cached(new_k)

    # 4. A deleted cached file is recomputed, not a crash.
    shutil.rmtree(Path(new_k.outputs["scores"]))
    again = run_pipeline(prefect_server, run_dir, [f"data.seed.path={seed_file}", "selection.n_clusters=2"])
    assert again.returncode == 0, again.output[-4000:]
    assert "scoring" in _computed(again)


def test_code_version_ignores_docs_and_formatting(tmp_path: Path, monkeypatch) -> None:
    from tasks.caching import stage_cache

    mod = tmp_path / "m.py"
    monkeypatch.setattr(stage_cache, "PROJECT_ROOT", tmp_path)

    def version(src: str) -> str:
        mod.write_text(src)
        stage_cache._CODE_HASHES.clear()
        return stage_cache.code_version(["m.py"])

    v1 = version('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    v2 = version('"""Other doc."""\n\n\ndef f( x ):  # comment\n    return x+1\n')
    v3 = version('"""Doc."""\ndef f(x):\n    return x + 2\n')
    assert v1 == v2 != v3


def test_shared_cache_entry_keeps_each_callers_labels(tmp_path: Path, monkeypatch) -> None:
    """Two methods that selected the same pairs share one finetuned model (same content key);
    each still gets its own method/budget labels for the report."""
    import pyarrow as pa

    from gdig_core.config import GdigConfig
    from gdig_core.data.pairs import write_pairs
    from tasks.caching.stage_cache import StageOutput
    from tasks.caching.stage_keys import CoreCall
    from tasks.stages.downstream import finetune_task

    calls = []

    def fake_finetune(self, pairs, out_dir, **kwargs):  # noqa: ANN001 - stands in for training.finetune
        calls.append(pairs.num_rows)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "weights.bin").write_bytes(b"w" * pairs.num_rows)
        return Path(out_dir)

    monkeypatch.setattr(CoreCall, "__call__", fake_finetune)
    pairs = pa.table({"id": ["a", "b"], "src_lang": ["de"] * 2, "tgt_lang": ["en"] * 2, "src": ["x", "y"], "tgt": ["X", "Y"]})
    sels = []
    for method in ("gdig", "quality"):
        d = tmp_path / method
        write_pairs(pairs, d / "selected.parquet")
        sels.append(StageOutput(stage="selection", key=method, dir=str(d), files={"selected.parquet": "same-content"},
                                summary={"method": method, "budget": 2, "size": 2}))
    cfg = GdigConfig()
    first = finetune_task.fn(cfg, str(tmp_path / "run"), ("base", "base-hash"), sels[0], 0)
    second = finetune_task.fn(cfg, str(tmp_path / "run"), ("base", "base-hash"), sels[1], 0)
    assert calls == [2] and second.cached and second.dir == first.dir
    assert (first.summary["method"], second.summary["method"]) == ("gdig", "quality")


def test_code_version_is_safe_from_a_thread_pool(monkeypatch) -> None:
    """Selection tasks hash code from pool threads at once; CPython 3.11's ast.parse is not
    thread-safe (it failed a real pipeline run with 'AST constructor recursion depth mismatch')."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.caching import stage_cache

    sets = [("gdig_core/selection/run.py",), ("gdig_core/influence/benefit.py", "gdig_core/influence/curvature.py"),
            ("gdig_core/training/finetune.py", "gdig_core/evaluation/evaluate.py", "gdig_core/evaluation/generation.py")] * 8
    expected = {}
    for names in sets:
        monkeypatch.setattr(stage_cache, "_CODE_HASHES", {})
        expected[names] = stage_cache.code_version(names)
    monkeypatch.setattr(stage_cache, "_CODE_HASHES", {})
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(stage_cache.code_version, sets))
    assert got == [expected[names] for names in sets]
