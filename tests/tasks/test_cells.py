"""Downstream cells without a server: planning, ids and labels, device assignment for local
parallelism, the heartbeat, the GPU slot a cell holds once, and a cell's outputs from a worker's
scratch directory through shared storage into a run directory under the same keys. The grid on
real workers: test_downstream_workers.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gdig_core.config import GdigConfig, method_spec
from tasks.caching.stage_cache import StageOutput
from tasks.caching.stage_keys import CoreCall
from tasks.runtime.devices import DevicePool, pinned_env
from tasks.stages.cells import Cell, cell_id, finished_cell, plan_cells, relabel, run_cell

BASE = ("base", "base-fingerprint")


def _selection(tmp_path: Path, method: str, content: str = "pairs", budget: int = 2) -> StageOutput:
    from gdig_core.data.pairs import write_pairs

    d = tmp_path / "sel" / method
    pairs = pa.table({"id": ["a", "b"], "src_lang": ["de"] * 2, "tgt_lang": ["en"] * 2, "src": ["x", "y"],
                      "tgt": ["X", content]})
    write_pairs(pairs, d / "selected.parquet")
    from gdig_core.integrity import file_digest

    return StageOutput(stage="selection", key=method, dir=str(d), files={"selected.parquet": file_digest(d / "selected.parquet")},
                       summary={"method": method, "kind": method, "model": "reference", "budget": budget, "size": 2})


@pytest.fixture
def fake_training(monkeypatch) -> list[str]:
    """Finetunes and evaluations that write small files at once (what cells do with them is tested
    here, not training)."""
    calls: list[str] = []

    def fake(self: CoreCall, **kwargs: Any) -> Any:
        calls.append(self.fn.__name__)
        if self.fn.__name__ == "finetune":
            out = Path(kwargs["out_dir"])
            out.mkdir(parents=True)
            (out / "weights.bin").write_bytes(kwargs["pairs"].column("tgt").to_pylist()[-1].encode())
            return out
        (Path(kwargs["out_dir"]) / "flores").mkdir(parents=True)
        (Path(kwargs["out_dir"]) / "flores" / "hypotheses.en").write_text("hyp\n")
        return {"flores": {"bleu": 1.5, "chrf": 2.5}}

    monkeypatch.setattr(CoreCall, "__call__", fake)
    return calls


def test_plan_cells_zero_shot_first_then_each_selection_and_seed(tmp_path: Path) -> None:
    cfg = GdigConfig()
    cfg.finetune.seeds = [0, 1]
    cfg.selection.methods = [method_spec("gdig").model_copy(update={"finetune_seeds": [3]}), method_spec("random")]
    cells = plan_cells(cfg, [_selection(tmp_path, "gdig"), _selection(tmp_path, "random")])
    assert [c.label for c in cells] == ["zero-shot", "gdig/b2/s3", "random/b2/s0", "random/b2/s1"]
    assert cells[2].meta == {"method": "random", "kind": "random", "model": "reference", "budget": 2, "size": 2,
                             "seed": 0}
    cfg.evaluation.zero_shot = False
    cfg.finetune.enabled = False
    assert plan_cells(cfg, [_selection(tmp_path, "gdig")]) == []


def test_cells_that_compute_the_same_share_an_id(tmp_path: Path) -> None:
    cfg = GdigConfig()
    gdig, quality = _selection(tmp_path, "gdig"), _selection(tmp_path, "quality")
    other = _selection(tmp_path, "random", content="other pairs")
    ids = {label: cell_id(cfg, BASE, Cell(label=label, selection=s, seed=seed))
           for label, s, seed in [("g0", gdig, 0), ("q0", quality, 0), ("g1", gdig, 1), ("r0", other, 0)]}
    assert ids["g0"] == ids["q0"] and len({ids["g0"], ids["g1"], ids["r0"]}) == 3
    # The evaluation settings are part of what a cell computes.
    changed = cfg.model_copy(deep=True)
    changed.evaluation.max_sentences = 7
    assert cell_id(changed, BASE, Cell(label="g0", selection=gdig, seed=0)) != ids["g0"]


def test_a_shared_computation_keeps_each_cells_labels(tmp_path: Path, fake_training: list[str]) -> None:
    cfg = GdigConfig()
    run_dir = str(tmp_path / "run")
    gdig = Cell(label="gdig/b2/s0", selection=_selection(tmp_path, "gdig"), seed=0)
    quality = Cell(label="quality/b2/s0", selection=_selection(tmp_path, "quality"), seed=0)
    first = run_cell(cfg, run_dir, BASE, gdig)
    second = relabel(first, quality)
    assert fake_training == ["finetune", "evaluate_model"]
    assert (first.model.summary["method"], second.model.summary["method"]) == ("gdig", "quality")
    assert second.evaluation.summary["method"] == "quality" and second.evaluation.label == "evaluation/quality/b2/s0"
    assert second.model.dir == first.model.dir
    assert finished_cell(cfg, run_dir, BASE, quality).complete(cfg, quality)


def test_cell_outputs_travel_through_shared_storage_under_their_keys(tmp_path: Path, fake_training: list[str]) -> None:
    """A worker computes the cell in its scratch run directory, packs it to shared storage with a
    sidecar; the pipeline takes it only when it verifies and then finds it under its own keys."""
    from tasks.sharding.jobs import read_done
    from tasks.stages.cell_outputs import import_cell, pack_cell

    cfg = GdigConfig()
    cell = Cell(label="gdig/b2/s0", selection=_selection(tmp_path, "gdig"), seed=0)
    scratch = tmp_path / "worker"
    computed = run_cell(cfg, str(scratch / "run"), BASE, cell)
    output = str(tmp_path / "shared" / "cells" / "x.tar")
    (tmp_path / "shared" / "cells").mkdir(parents=True)
    pack_cell(computed, output, {"ran_in": "cell-gdig-b2-s0"}, scratch)
    assert read_done(output)["summary"] == {"ran_in": "cell-gdig-b2-s0"}

    run_dir = str(tmp_path / "pipeline")
    assert not finished_cell(cfg, run_dir, BASE, cell).complete(cfg, cell)
    names = import_cell(run_dir, output)
    assert names == [f"evaluation/{computed.evaluation.key[:24]}", f"finetune/{computed.model.key[:24]}"]
    found = finished_cell(cfg, run_dir, BASE, cell)
    assert found.complete(cfg, cell)
    assert (found.model.key, found.evaluation.key) == (computed.model.key, computed.evaluation.key)
    assert found.evaluation.summary["metrics"] == {"flores": {"bleu": 1.5, "chrf": 2.5}}
    assert not list((Path(run_dir) / "cas").glob(".*.tmp"))

    # A byte changed in place (same size): the sidecar no longer verifies, so it is not taken.
    data = bytearray(Path(output).read_bytes())
    data[len(data) // 2] ^= 1
    Path(output).write_bytes(bytes(data))
    assert read_done(output) is None


def test_the_worker_reads_fetched_test_sets_under_the_same_key(tmp_path: Path) -> None:
    """The worker points data.data_dir (in no key) at links to the fetched test sets: the
    evaluation key, which hashes the files, is the pipeline's."""
    from tasks.stages.cell_jobs import _staged_test_sets
    from tasks.stages.cell_worker import _with_local_test_sets
    from tasks.stages.downstream import evaluation_key

    data = tmp_path / "data"
    (data / "de-en").mkdir(parents=True)
    for name, text in [("flores.devtest.de", "a\n"), ("flores.devtest.en", "A\n"), ("wmt22.de", "b\n"),
                       ("wmt22.en", "B\n")]:
        (data / "de-en" / name).write_text(text)
    cfg = GdigConfig()
    cfg.data.data_dir = str(data)
    cfg.orchestration.shared_storage = str(tmp_path / "shared")
    staged = _staged_test_sets(cfg)
    assert set(staged) == {"de-en/flores.devtest.de", "de-en/flores.devtest.en", "de-en/wmt22.de", "de-en/wmt22.en"}
    assert all(loc.startswith(str(tmp_path / "shared" / "blobs")) for loc in staged.values())
    worker_cfg = _with_local_test_sets(cfg.model_copy(deep=True), staged, tmp_path / "worker" / "data")
    assert worker_cfg.data.data_dir != cfg.data.data_dir
    assert evaluation_key(worker_cfg, "model") == evaluation_key(cfg, "model")
    (data / "de-en" / "wmt22.en").write_text("changed\n")  # the key follows the files' content
    assert evaluation_key(cfg, "model") != evaluation_key(worker_cfg, "model")


def test_each_running_cell_gets_its_own_device() -> None:
    pool = DevicePool(3)
    held: set[int] = set()
    seen: list[int] = []
    clash: list[int] = []
    lock = threading.Lock()

    def cell() -> None:
        with pool.device() as index:
            with lock:
                if index in held:
                    clash.append(index)
                held.add(index)
                seen.append(index)
            time.sleep(0.02)
            with lock:
                held.discard(index)

    threads = [threading.Thread(target=cell) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not clash and len(seen) == 12 and set(seen) == {0, 1, 2}


def test_a_pinned_child_sees_one_device_by_index() -> None:
    assert pinned_env(2, {}) == {"CUDA_VISIBLE_DEVICES": "2"}
    # A pipeline itself pinned to GPUs 4 and 6 hands out those two.
    assert [pinned_env(i, {"CUDA_VISIBLE_DEVICES": "4, 6"}) for i in (0, 1)] == [
        {"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"}]
    with pytest.raises(ValueError, match="sees only"):
        pinned_env(2, {"CUDA_VISIBLE_DEVICES": "4,6"})


def test_local_cells_run_one_per_gpu_and_one_at_a_time_on_a_cpu(monkeypatch) -> None:
    import torch

    from tasks.stages.grid import local_parallelism

    cfg = GdigConfig()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for device, expected in [("cuda", 4), ("auto", 4), ("cpu", 1), ("cuda:1", 1)]:
        cfg.model.device = device
        assert local_parallelism(cfg) == expected, device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg.model.device = "auto"
    assert local_parallelism(cfg) == 1


def test_a_cell_holds_one_gpu_slot_for_its_finetune_and_evaluation(monkeypatch) -> None:
    from contextlib import contextmanager

    from prefect.context import FlowRunContext

    from tasks.runtime import gpu_slots

    taken: list[str] = []

    @contextmanager
    def hold(orch, what):  # noqa: ANN001, ANN202 - stands in for the server's limit
        taken.append(what)
        yield

    monkeypatch.setattr(gpu_slots, "hold_gpu_slot", hold)
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: object()))
    orch = GdigConfig().orchestration
    with gpu_slots.gpu_slot(orch, "cell"):
        with gpu_slots.gpu_slot(orch, "finetune"):
            pass
        with gpu_slots.gpu_slot(orch, "evaluation"):
            pass
    with gpu_slots.gpu_slot(orch, "next cell"):
        pass
    assert taken == ["cell", "next cell"]


def test_the_heartbeat_tells_a_live_run_from_a_dead_one(tmp_path: Path) -> None:
    from tasks.sharding.heartbeat import HeartbeatWatch, beating

    location = str(tmp_path / "cell.heartbeat")
    watch = HeartbeatWatch(location, lost_after=0.5)
    with beating(location, 0.05, "run-2"):
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert watch.silent_for("run-2") is None
            time.sleep(0.05)
    assert not Path(location).exists()
    time.sleep(0.7)
    assert watch.silent_for("run-2") > 0.5
    # The last beat of a killed earlier try of the same cell does not keep this try alive.
    Path(location).write_text('{"flow_run": "run-1", "beat": 9}')
    retry = HeartbeatWatch(location, lost_after=0.3)
    assert retry.silent_for("run-3") is None
    time.sleep(0.4)
    assert retry.silent_for("run-3") > 0.3


@pytest.mark.slow
def test_a_cell_in_a_pinned_child_process_writes_under_the_pipelines_keys(
    tmp_path: Path, tiny_model_dir: Path, data_dir: Path
) -> None:
    """The multi-GPU path of local mode, on a CPU: the cell runs in a child process that sees
    one device (CUDA_VISIBLE_DEVICES by index) and writes into the run directory's cache, where
    this process finds it under the keys it computes itself."""
    from gdig_core.config import DatasetSpec
    from gdig_core.data.pairs import write_pairs
    from gdig_core.data.readers import read_dataset
    from gdig_core.integrity import file_digest
    from tasks.runtime.records import read_records, start_records
    from tasks.stages.common import model_fingerprint
    from tasks.stages.local_cells import run_pinned

    cfg = GdigConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.model.device = "cpu"
    cfg.prompt.max_length = 48
    cfg.finetune.train = cfg.finetune.train.model_copy(update={"max_steps": 1, "batch_size": 4})
    cfg.evaluation = cfg.evaluation.model_copy(update={"max_sentences": 2, "batch_size": 2, "max_new_tokens": 4})
    sel = _selection(tmp_path, "gdig")
    pairs = read_dataset(DatasetSpec(path="de-en/pool.wmt17-20.jsonl", sample=8), cfg.data, "pool").table
    write_pairs(pairs, sel.path("selected.parquet"))
    sel = sel.model_copy(update={"files": {"selected.parquet": file_digest(sel.path("selected.parquet"))}})
    base = (str(tiny_model_dir), model_fingerprint(str(tiny_model_dir)))
    cell = Cell(label="gdig/b2/s0", selection=sel, seed=0)
    run_dir = str(tmp_path / "run")
    records = start_records(run_dir, "test")
    run_pinned(cfg, run_dir, base, cell, 0)
    found = finished_cell(cfg, run_dir, base, cell)
    assert found.complete(cfg, cell)
    assert found.evaluation.summary["metrics"]
    assert found.ran_in.endswith("GPU 0")
    assert {(r["event"], r["stage"]) for r in read_records(records)} >= {
        ("computed", "finetune/gdig/b2/s0"), ("computed", "evaluation/gdig/b2/s0")}
