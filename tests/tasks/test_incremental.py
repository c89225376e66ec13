"""Score once, select many times, end to end on the tiny config against a real Prefect server:
a pool that grew, lost rows and was shuffled scores only its new rows under pinned reference and
factors (counted from the records and shown in the progress artifact; every shared row's scores
identical); a wrong pinned hash is refused before anything runs; ``gdig rescore`` scores a new
seed set from the gradient store without a pass over the pool, and with an identity projection
(every tiny layer fits the store) its scores equal the exact path's."""

from __future__ import annotations

import json
import random
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prefect_fixtures import PROJECT_ROOT, PY, run_pipeline

from gdig_core.influence.scores import read_scores

#: test-tiny's largest tracked layer is 64 x 32: 2,048 dimensions keep every layer exactly.
FAST = ["finetune.enabled=false", "evaluation.enabled=false", "data.pool.sample=null",
        "scoring.store.enabled=true", "scoring.store.dim_per_layer=2048"]


def _pool(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return f"data.pool.path={path}"


def _scoring_record(run) -> dict:  # noqa: ANN001
    return next(r for r in run.records() if r["stage"] == "scoring/reference" and r["event"] in ("computed", "cached"))


def _scores(run) -> dict[str, dict]:  # noqa: ANN001
    table = read_scores(sorted(Path(run.outputs["scores"]).glob("*.parquet")))
    return {str(i): {"benefit": table.benefit[k], "features": table.features[k], "loss": table.loss[k],
                     "grad_norm": table.grad_norm[k], "mean": table.benefit_mean[k]}
            for k, i in enumerate(table.ids)}


def _progress_descriptions(server) -> list[str]:  # noqa: ANN001
    body = json.dumps({"artifacts": {"key": {"any_": ["scoring-progress"]}}}).encode()
    req = urllib.request.Request(server.url + "/artifacts/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [a.get("description") or "" for a in json.load(resp)]


def _pin_args(outputs: dict) -> list[str]:
    pins = outputs["pins"]
    return [f"pin.reference.dir={pins['reference']['dir']}", f"pin.reference.hash={pins['reference']['hash']}",
            f"pin.factors.reference.dir={pins['factors']['reference']['dir']}",
            f"pin.factors.reference.hash={pins['factors']['reference']['hash']}"]


@pytest.mark.slow
def test_grown_shrunk_shuffled_pool_scores_only_new_rows_and_rescore_uses_the_store(
    prefect_server, tmp_path: Path, data_dir: Path
) -> None:
    lines = (data_dir / "de-en" / "pool.wmt17-20.jsonl").read_text(encoding="utf-8").splitlines()[:64]
    rows = [json.loads(x) for x in lines]
    run_dir = tmp_path / "run"

    first = run_pipeline(prefect_server, run_dir, [*FAST, _pool(tmp_path / "pool1.jsonl", rows[:48])])
    assert first.returncode == 0, first.output[-4000:]
    rec = _scoring_record(first)
    assert (rec["event"], rec["rows_scored"], rec["rows_reused"], rec["path"]) == ("computed", 48, 0, "exact")

    # The nightly pool: 8 rows gone, 16 new, shuffled; reference model and factors pinned.
    later = rows[8:64]
    random.Random(0).shuffle(later)
    grown = [*FAST, _pool(tmp_path / "pool2.jsonl", later), *_pin_args(first.outputs)]
    second = run_pipeline(prefect_server, run_dir, grown)
    assert second.returncode == 0, second.output[-4000:]
    rec = _scoring_record(second)
    assert (rec["event"], rec["rows_scored"], rec["rows_reused"], rec["rows_stored"]) == ("computed", 16, 40, 16)
    assert [r["stage"] for r in second.events("pinned")] == ["reference", "curvature/reference"]
    assert not second.events("computed", "reference") and not second.events("computed", "curvature")
    assert len(second.events("shard_computed", "scoring")) == 1  # 16 new rows, shard_size 16
    assert any("rows_reused=40 rows_scored=16" in d for d in _progress_descriptions(prefect_server))
    before, after = _scores(first), _scores(second)
    shared = sorted(set(before) & set(after))
    assert len(shared) == 40 and len(after) == 56
    for i in shared:  # copied from the store: identical, not merely close
        for name, value in before[i].items():
            np.testing.assert_array_equal(after[i][name], value, err_msg=f"{i} {name}")

    # A wrong pinned hash is refused before the Prefect server starts.
    bad = [a if not a.startswith("pin.reference.hash=") else "pin.reference.hash=" + "beef" * 16 for a in grown]
    refused = run_pipeline(prefect_server, run_dir, bad, timeout=120)
    assert refused.returncode == 2 and "pin.reference.hash:" in refused.output and "refusing to use it" in refused.output

    # The same seeds through the store path: no pass over the pool, the exact path's scores.
    proc = subprocess.run(
        [PY, "-m", "gdig_cli.main", "rescore", str(run_dir), "--seed", str(data_dir / "de-en" / "flores.dev.tsv"),
         "--set", "data.seed.sample=8", "--json"],
        env=prefect_server.env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    from prefect_fixtures import PipelineRun

    third = PipelineRun(0, proc.stdout, run_dir, json.loads(proc.stdout[proc.stdout.index("{\n"):]))
    rec = _scoring_record(third)
    assert (rec["path"], rec["rows_scored"], rec["rows_reused"], rec["rows_stored"]) == ("store", 56, 0, 0)
    assert not third.events("shard_computed", "scoring")  # every candidate came from the store
    assert any("rows_reused=0 rows_scored=56" in d and "gradient store" in d
               for d in _progress_descriptions(prefect_server))
    assert "precondition/reference" in {r["stage"] for r in third.events("computed")}
    store = _scores(third)
    for i, exact in after.items():
        scale = np.abs(exact["benefit"]).max()
        np.testing.assert_allclose(store[i]["benefit"], exact["benefit"], rtol=1e-4, atol=1e-5 * scale)
    report = Path(third.outputs["report"]).read_text(encoding="utf-8")
    assert "scores at the reference model: **projected gradient store** (2048 dimensions per tracked layer" in report
