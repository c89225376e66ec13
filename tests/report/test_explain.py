"""explain_candidate and `gdig explain` on a run directory laid out as the pipeline lays it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from selection_fixtures import blobs, write_run

from gdig_cli import explain_cmd
from gdig_core.config import SelectionConfig
from gdig_core.report.explain import ExplainError, explain_candidate, format_explanation
from gdig_core.selection import run_selection


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """60 candidates in 3 blobs x 5 seeds; c0007 is bad; B=6 with K=3."""
    root = tmp_path_factory.mktemp("run")
    feats, truth = blobs(n_per=20, centres=3, d=4, seed=2)
    rng = np.random.default_rng(5)
    benefit = rng.random((60, 5)) + 0.05  # all benefit every seed...
    benefit[40:, 0] = -0.5  # ...except the third blob, which harms seed s00 (below tau=1)
    benefit[10] = [3.0, 2.0, 1.0, 0.5, 0.25]  # best candidate by far
    scores, pool = write_run(root, benefit, feats, bad={7: "empty_target"})
    cfg = SelectionConfig(quality_rule="fraction", budgets=[6], n_clusters=3, methods=["gdig", "quality", "random"])
    run_selection(scores, pool, cfg, root / "selection", plots=False)
    return root


def _status(run_dir, method, status):
    t = pq.read_table(run_dir / "selection" / method / "b6" / "candidates.parquet").to_pylist()
    return [r for r in t if r["status"] == status]


def test_selected_candidate(run_dir):
    e = explain_candidate(run_dir, "c0010")
    assert e.ok and e.n_seeds == 5 and e.benefit_mean == pytest.approx(1.35)
    assert e.benefit_frac_pos == 1.0 and e.percentile == 1.0
    assert [s.seed_id for s in e.helped[:2]] == ["s00", "s01"] and e.helped[0].benefit == pytest.approx(3.0)
    assert e.harmed == []  # it benefits every seed: none is listed as harmed
    assert e.pair["src"] == "pool Quelle c0010"
    by = {d.method: d for d in e.decisions}
    assert set(by) == {"gdig", "quality", "random"}
    assert by["gdig"].selected and by["gdig"].rank == 1 and by["gdig"].cluster == 0
    assert "quality rank 1" in by["gdig"].reason and "round-robin pass 1" in by["gdig"].reason
    assert by["quality"].selected and by["quality"].rank == 1
    text = format_explanation(e)
    assert "candidate c0010" in text and "SELECTED (rank 1)" in text and "seed Quelle s00" in text
    assert "seeds it harms most:\n  (none: it harms no seed)" in text


def test_rejected_below_quality(run_dir):
    e = explain_candidate(run_dir, "c0045", method="gdig")
    assert e.ok and e.benefit_frac_pos == pytest.approx(0.8)
    assert e.harmed[0].seed_id == "s00" and e.harmed[0].benefit == pytest.approx(-0.5)
    (d,) = e.decisions
    assert not d.selected and d.status == "below_quality" and d.cluster is None
    assert "not in the quality set" in d.reason and "80%" in d.reason
    assert "seeds it harms most" in format_explanation(e)


def test_rejected_not_reached_in_cluster(run_dir):
    row = _status(run_dir, "gdig", "not_reached")[0]
    e = explain_candidate(run_dir, row["id"], method="gdig", budget=6)
    (d,) = e.decisions
    assert d.status == "not_reached" and not d.selected
    assert d.cluster == row["cluster"] and d.cluster_size and d.cluster_rank >= 2
    assert "round-robin passes" in d.reason and f"cluster {row['cluster']}" in d.reason
    assert f"cluster {d.cluster} of size {d.cluster_size}" in format_explanation(e)


def test_bad_candidate(run_dir):
    e = explain_candidate(run_dir, "c0007")
    assert not e.ok and e.bad_reason == "empty_target" and e.helped == [] and e.benefit_mean is None
    assert all(d.status == "bad" and "empty_target" in d.reason for d in e.decisions)
    assert "BAD (empty_target)" in format_explanation(e)


def test_unknown_id_and_missing_files(run_dir, tmp_path):
    with pytest.raises(ExplainError, match="none of the 2 score shards"):
        explain_candidate(run_dir, "nope")
    with pytest.raises(ExplainError, match="no score shards"):
        explain_candidate(tmp_path, "c0001")
    # Without pool, seed and selection files the statistics still come out.
    e = explain_candidate(run_dir, "c0010", pool="missing.parquet", seed="x.parquet", selection="none")
    assert e.pair is None and e.helped[0].src is None and e.decisions == []
    assert "no selection outputs found" in format_explanation(e)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="gdig")
    explain_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(run_dir, capsys):
    assert _cli(["explain", str(run_dir), "c0010", "--method", "quality"]) == 0
    out = capsys.readouterr().out
    assert "quality b6: SELECTED (rank 1)" in out and "gdig b6" not in out
    assert _cli(["explain", str(run_dir), "c0045", "--json", "--top", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "c0045" and len(data["helped"]) == 2
    assert {d["method"] for d in data["decisions"]} == {"gdig", "quality", "random"}
    assert _cli(["explain", str(run_dir), "missing-id"]) == 2
    assert "gdig: error:" in capsys.readouterr().err


def test_outputs_json_locates_stage_dirs(run_dir, tmp_path):
    """The pipeline keeps scores and data in stage directories and records them in outputs.json."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "selection", run / "selection")
    shutil.copytree(run_dir / "scores", tmp_path / "stages" / "scores-abc" / "scores")
    shutil.copytree(run_dir / "data", tmp_path / "stages" / "data-def")
    outputs = {
        "scores": str(tmp_path / "stages" / "scores-abc" / "scores"),
        "data": str(tmp_path / "stages" / "data-def"),
    }
    (run / "outputs.json").write_text(json.dumps(outputs))
    e = explain_candidate(run, "c0010", method="gdig")
    assert e.pair["src"] == "pool Quelle c0010" and e.helped[0].src == "seed Quelle s00"
    assert e.decisions[0].selected
    with pytest.raises(ExplainError, match="no score shards"):
        explain_candidate(run, "c0010", scores="elsewhere/*.parquet")


# ---------------------------------------------------------------- red team (issue 22)


def test_only_seeds_with_negative_benefit_are_listed_as_harmed(run_dir):
    """c0045 harms one seed (s00) and helps four: the four were listed under "harms most"."""
    e = explain_candidate(run_dir, "c0045", method="gdig", top_n=5)
    assert [s.seed_id for s in e.harmed] == ["s00"] and all(s.benefit < 0 for s in e.harmed)
    assert len(e.helped) == 4 and all(s.benefit > 0 for s in e.helped)
    text = format_explanation(e)
    harmed_block = text.split("seeds it harms most:")[1].split("decisions:")[0]
    assert harmed_block.count("\n  ") == 1 and "-0.5" in harmed_block


def test_bad_top_budget_and_method_are_clear_errors(run_dir, capsys):
    for bad in (["--top", "-1"], ["--top", "0"], ["--budget", "-3"]):
        with pytest.raises(SystemExit) as info:
            _cli(["explain", str(run_dir), "c0010", *bad])
        assert info.value.code == 2
        assert "must be a positive integer" in capsys.readouterr().err
    from gdig_cli.main import main

    assert main(["explain", str(run_dir), "c0010", "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no selection of method 'nope'" in err and "gdig b6" in err and "random b6" in err
    assert main(["explain", str(run_dir), "c0010", "--budget", "7"]) == 2
    err = capsys.readouterr().err
    assert "budget 7" in err and "gdig b6" in err


def test_selections_of_an_earlier_config_are_marked_stale_and_left_out(run_dir, tmp_path):
    """A rerun with other methods left the old selections beside the new ones, unmarked; explain
    listed them as if current. The outputs index now says which are the latest run's."""
    import shutil

    from tasks.caching.stage_cache import StageOutput
    from tasks.stages.publish import STALE_MARKER, publish_outputs

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # gdig, quality and random at b6: an earlier run's
    scores, pool = write_run(tmp_path / "cas", np.ones((60, 5)), blobs(20, 3, 4, 2)[0])
    run_selection(scores, pool, SelectionConfig(budgets=[6], n_clusters=3, methods=["gdig"]), tmp_path / "sel",
                  plots=False)
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.md").write_text("# report\n")

    def out(stage, d, **summary):
        return StageOutput(stage=stage, key="k", dir=str(d), summary=summary)

    sel = out("selection", tmp_path / "sel" / "gdig" / "b6", method="gdig", budget=6, kind="gdig")
    outputs = publish_outputs(str(run), out("data", run / "data"), out("scoring", run), [sel],
                              out("report", report_dir), run / "records.jsonl")
    stale = sorted(str(p) for p in (run / "selection" / m / "b6" for m in ("quality", "random")))
    assert list(outputs["selected"]) == ["gdig/b6"] and sorted(outputs["stale_selections"]) == stale
    assert json.loads((run / "outputs.json").read_text())["stale_selections"] == outputs["stale_selections"]
    assert all((Path(p) / STALE_MARKER).is_file() for p in stale)
    assert not (run / "selection" / "gdig" / "b6" / STALE_MARKER).exists()
    assert "## Stale selections" in (run / "report" / "report.md").read_text()

    e = explain_candidate(run, "c0010")
    assert [d.method for d in e.decisions] == ["gdig"] and e.stale_selections == ["quality/b6", "random/b6"]
    assert "stale selections" in format_explanation(e)
    with pytest.raises(ExplainError, match="from an earlier run .*quality b6"):
        explain_candidate(run, "c0010", method="quality")
