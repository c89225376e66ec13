"""Resume and cache you can trust, in units: digests instead of sizes, deterministic digests,
no temp leftovers, the run lock, confined names and paths, errors before any work starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import PROJECT_ROOT

from gdig_core.config import ConfigError, GdigConfig, load_config
from gdig_core.names import PathEscapeError, check_safe_name, inside
from tasks.caching.stage_cache import run_stage, sweep_temporaries
from tasks.runtime.run_lock import RunDirLocked, acquire, release

TINY = PROJECT_ROOT / "configs" / "test-tiny.yaml"


# ---------------------------------------------------------------- digests


def test_volatile_outputs_do_not_change_the_digest(tmp_path: Path) -> None:
    """Two identical computes whose summary file differs (timings, paths) hand the same digest
    downstream; a change to a real output still changes it."""
    def make(stamp: str, weights: bytes):
        def compute(out: Path, work: Path) -> dict:
            (out / "model").mkdir()
            (out / "model" / "weights.bin").write_bytes(weights)
            (out / "model" / "training_summary.json").write_text(json.dumps({"seconds": stamp}))
            return {}
        return compute

    a = run_stage(tmp_path, "m", {"x": "1"}, "{}", [], make("1.5", b"w"), volatile=["model/training_summary.json"])
    b = run_stage(tmp_path, "m", {"x": "2"}, "{}", [], make("9.9", b"w"), volatile=["model/training_summary.json"])
    c = run_stage(tmp_path, "m", {"x": "3"}, "{}", [], make("1.5", b"W"), volatile=["model/training_summary.json"])
    assert a.files != b.files and a.digest("model") == b.digest("model") != c.digest("model")
    # A corrupted volatile file is still caught: it is verified like any other.
    (Path(a.dir) / "model" / "training_summary.json").write_text(json.dumps({"seconds": "2.5"}))
    assert not run_stage(tmp_path, "m", {"x": "1"}, "{}", [], make("1.5", b"w"),
                         volatile=["model/training_summary.json"]).cached


def test_sweep_removes_what_killed_runs_left(tmp_path: Path) -> None:
    cas = tmp_path / "cas"
    (cas / "reference" / ".abc123.f00.tmp").mkdir(parents=True)
    (cas / "scoring" / "k.work" / "shards" / "scores").mkdir(parents=True)
    half = cas / "scoring" / "k.work" / "shards" / "scores" / ".shard-00001.parquet.x1y2.tmp"
    half.write_bytes(b"partial")
    done = cas / "scoring" / "k.work" / "shards" / "scores" / "shard-00000.parquet"
    done.write_bytes(b"done")
    removed = sweep_temporaries(tmp_path)
    assert len(removed) == 2 and done.exists() and not half.exists()
    assert [p.name for p in (cas / "reference").iterdir()] == []


# ---------------------------------------------------------------- run lock

_HOLD = """
import sys, time
from tasks.runtime.run_lock import acquire
acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_on_a_run_dir_waits_or_fails_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid}.*on_locked is 'fail'"):
            acquire(tmp_path, on_locked="fail")
        notes: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(RunDirLocked, match="waited 1 s"):
            acquire(tmp_path, on_locked="wait", wait_seconds=1.0, notify=notes.append, poll_seconds=0.2)
        assert time.monotonic() - t0 < 10 and "waiting for it to finish" in notes[0]
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a dead process's lock: no stale lock after a kill.
    assert acquire(tmp_path, on_locked="fail") is True
    assert acquire(tmp_path, on_locked="fail") is False  # re-entrant in this process
    release(tmp_path)


# ---------------------------------------------------------------- names and paths


def test_names_that_become_paths_are_confined(tmp_path: Path) -> None:
    for bad in ["../../../../tmp/x/ESCAPED", "..", ".hidden", "a/b", "", "x" * 65, "tab\tname"]:
        with pytest.raises(ValueError, match="not a safe name"):
            check_safe_name(bad)
    assert check_safe_name("wmt22.de-en_v2") == "wmt22.de-en_v2"
    escape = ["evaluation.test_sets=[{name: ../../../../../../tmp/x/ESCAPED, path: a.de, tgt_path: a.en, "
              "format: parallel}]"]
    with pytest.raises(ConfigError, match=r"evaluation\.test_sets\.0\.name.*not a safe name"):
        load_config(TINY, escape)
    with pytest.raises(ConfigError, match="name: .*not a safe name"):
        load_config(TINY, ["name=../run"])
    # A deployment parameter typed into the UI goes through the same model.
    raw = GdigConfig().model_dump(mode="json")
    raw["evaluation"]["test_sets"][0]["name"] = "../x"
    with pytest.raises(ValueError, match="not a safe name"):
        GdigConfig.model_validate(raw)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "run", "selection", "gdig") == (tmp_path / "run" / "selection" / "gdig").resolve()
    for parts in (("..", "x"), ("link", "x"), ("/tmp/x",)):
        with pytest.raises(PathEscapeError, match="outside"):
            inside(tmp_path / "run", *parts)


def test_gdig_evaluate_name_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gdig_cli.main import main

    rc = main(["evaluate", str(TINY), "--src", "a", "--ref", "b", "--name", "../../x"])
    assert rc == 2 and "--name '../../x' is not a safe name" in capsys.readouterr().err


# ---------------------------------------------------------------- errors up front


@pytest.mark.parametrize(("override", "message"), [
    ("selection.budgets=[1,", "--set selection.budgets: the value '[1,' is not valid YAML"),
    ("scoring.batch_size=true", "scoring.batch_size: Input should be a valid integer (got True)"),
    ("finetune.train.max_steps=2.5", "finetune.train.max_steps: Input should be a valid integer"),
    ("selection.methods=[]", "selection.methods is empty"),
    ("finetune.seeds=[]", "finetune.seeds: List should have at least 1 item"),
    ("evaluation.test_sets=[]", "test_sets is empty"),
    ("prompt.template='Translate {bogus}: {src}'", "prompt.template: Value error, unknown field '{bogus}'"),
    ("prompt.template='Translate }: {src}'", "Single '}' encountered"),
    ("prompt.template='Translate {0}: {src}'", "'{0}' is not a field name"),
])
def test_bad_settings_fail_at_load_with_their_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert message in str(err.value)


def test_every_known_template_field_encodes() -> None:
    from gdig_core.config.prompt import PROMPT_FIELDS
    from gdig_core.data.encoding import build_prompt

    cfg = GdigConfig()
    cfg.prompt.template = " ".join("{" + f + "}" for f in PROMPT_FIELDS)
    assert build_prompt(cfg, "Hallo", "de", "en") == "Hallo de en German English"


def test_test_sets_are_checked_before_any_work(tmp_path: Path, data_dir: Path) -> None:
    from gdig_core.preflight import preflight

    src = (data_dir / "de-en" / "wmt22.de").read_text(encoding="utf-8").splitlines()
    (tmp_path / "short.en").write_text("\n".join(src[:-1]) + "\n", encoding="utf-8")
    sets = (f"evaluation.test_sets=[{{name: wmt22, path: de-en/wmt22.de, tgt_path: {tmp_path / 'short.en'}, "
            f"format: parallel}}, {{name: gone, path: {tmp_path / 'missing.de'}, tgt_path: {tmp_path / 'missing.en'}, "
            "format: parallel}]")
    cfg = load_config(TINY, [f"data.data_dir={data_dir}", sets])
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    text = str(err.value)
    assert "evaluation.test_sets.0 (wmt22)" in text and "not line-aligned" in text
    assert f"evaluation.test_sets.1 (gone).path: {tmp_path / 'missing.de'}: no such file" in text
    preflight(load_config(TINY, [f"data.data_dir={data_dir}"]))  # the real sets pass


def test_cli_run_refuses_a_misaligned_test_set_in_seconds(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("one\n", encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gdig_cli.run_cmd", str(TINY), "--set", f"orchestration.run_dir={tmp_path / 'run'}",
         "--set", f"evaluation.test_sets=[{{name: mine, path: {tmp_path / 'a.de'}, tgt_path: {tmp_path / 'a.en'}, "
         "format: parallel}]"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "evaluation.test_sets.0 (mine)" in proc.stderr and "not line-aligned" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "cas").exists()
    assert time.monotonic() - t0 < 60


def test_data_cli_options_fail_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gdig_cli.main import main

    pairs = tmp_path / "p.tsv"
    pairs.write_text("Hallo\tHello\nZwei\tTwo\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(pairs), "--max-chars", "0"])
    assert exit_.value.code == 2 and "--max-chars: must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["data", "corrupt", str(pairs), str(tmp_path / "o.jsonl"), "--kinds", ","]) == 2
    assert "--kinds: no noise kind in ','" in capsys.readouterr().err
    hyps = tmp_path / "h.jsonl"
    hyps.write_text('{"id": "a", "hyp": "x"}\n{broken\n', encoding="utf-8")
    rc = main(["data", "corrupt", str(pairs), str(tmp_path / "o.jsonl"), "--kinds", "low_quality_mt",
               "--mt-hypotheses", str(hyps)])
    assert rc == 2 and f"{hyps}, line 2: broken JSON" in capsys.readouterr().err


def test_bom_is_stripped_and_all_bad_rows_are_explained(tmp_path: Path) -> None:
    from gdig_core.config import DataConfig, DatasetSpec
    from gdig_core.data.pairs import DataError
    from gdig_core.data.readers import read_dataset

    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfHallo Welt\tHello world\nZwei\tTwo\n")
    src, tgt = tmp_path / "bom.de", tmp_path / "bom.en"
    src.write_bytes(b"\xef\xbb\xbfEins\nZwei\n")
    tgt.write_bytes(b"\xef\xbb\xbfOne\nTwo\n")
    cfg = DataConfig(data_dir=str(tmp_path))
    assert read_dataset(DatasetSpec(path=str(tsv)), cfg, "pool").table.column("src")[0].as_py() == "Hallo Welt"
    table = read_dataset(DatasetSpec(path=str(src), tgt_path=str(tgt), format="parallel"), cfg, "test").table
    assert table.column("src")[0].as_py() == "Eins" and table.column("tgt")[0].as_py() == "One"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"src": 1, "tgt": "x"}\n{"src": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset(DatasetSpec(path=str(bad)), cfg, "pool")
    text = str(err.value)
    assert "3 rows quarantined" in text and "line 1: broken JSON" in text
    assert "field 'src': must be a string, got int" in text and "field 'tgt': missing" in text


def test_corrupt_files_name_themselves(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gdig_core.influence.curvature import load_stats
    from gdig_core.influence.factors import load_factors
    from gdig_core.influence.scores import read_scores
    from gdig_core.integrity import CorruptFileError

    shard = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(500)]}), shard)
    data = bytearray(shard.read_bytes())
    data[-60:-20] = bytes(b ^ 0xFF for b in data[-60:-20])
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"^{shard}: cannot read this score shard"):
        read_scores([shard])
    junk = tmp_path / "factors.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError, match=f"^{junk}: cannot read this curvature factors file"):
        load_factors(junk)
    with pytest.raises(CorruptFileError, match=f"^{junk}: cannot read this curvature statistics file"):
        load_stats(junk)


def test_gdig_run_on_a_directory_in_use_exits_when_told_to(tmp_path: Path, data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run(
            [sys.executable, "-m", "gdig_cli.run_cmd", str(TINY), "--set", f"orchestration.run_dir={run_dir}",
             "--set", f"data.data_dir={data_dir}", "--set", "orchestration.on_locked=fail"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"run directory {run_dir} is in use by pid {holder.pid}" in proc.stderr
    assert not (run_dir / ".prefect").exists(), "the second run must not start a Prefect server there"
