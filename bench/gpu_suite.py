"""One command for one GPU machine: the figures only a GPU gives, in this order, each part written
to ``--out`` as soon as it ends (a run cut short keeps what it did):

1. the influence benchmark (bench/bench_influence.py: the 953M Llama-shaped model, 256 tokens half
   masked, 48 MLP layers, 32 seeds, bf16): scoring and factor fitting against a plain training
   step, kronfluence's pairwise scoring when it is importable, peak memory ->
   ``influence.json``, ``influence.md``;
2. the evidence experiment on Gemma-3-270M (configs/evidence-de-en-gpu.yaml) through the real
   pipeline (``gdig run``), in phases that each finish something: the first budget, then every
   budget, then more finetuning seeds while the time allows. The GGUF is converted once, up front;
   every phase reuses the converted checkpoint and the stages the phases before it computed ->
   ``evidence.json``, ``evidence.md`` (the pipeline's report, or a partial table of what finished),
   ``evidence.png``.

``suite.json`` says what ran, on what, and how long each part took; ``suite.log`` holds the output
of every step. ``--tiny`` runs the same code on a CPU in minutes (tiny Llama, small pool).

    PYTHONPATH=/tmp/site python3 bench/gpu_suite.py --out $OUT/suite --data-dir gpu-data/mt   # GPU
    .venv/bin/python bench/gpu_suite.py --tiny --out runs/gpu-suite-tiny                      # CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdig_core.config import GdigConfig, load_config  # noqa: E402
from gdig_core.io import atomic_write_json, atomic_write_text  # noqa: E402

GPU_CONFIG = ROOT / "configs" / "evidence-de-en-gpu.yaml"
#: Seconds kept back from each step for writing what it did.
RESERVE_S = 15.0


class Suite:
    """The output folder, the time budget and ``suite.json``, rewritten after every step."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.start = time.time()
        self.budget_s = budget_s
        self.state: dict[str, Any] = {"budget_s": budget_s, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / "suite.log"

    def remaining(self) -> float:
        return self.budget_s - (time.time() - self.start)

    def save(self, part: str | None = None, **fields: Any) -> None:
        if part is not None:
            self.state["parts"].setdefault(part, {}).update(fields)
        self.state["wall_s"] = round(time.time() - self.start, 1)
        atomic_write_json(self.out / "suite.json", self.state)

    def note(self, text: str) -> None:
        line = f"[gpu_suite {time.time() - self.start:7.1f}s] {text}"
        print(line, flush=True)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run ``cmd`` from the project root with its output appended to ``log``; stop its whole
    process group (servers it started included) after ``timeout`` s. Returns (status, seconds)."""
    t0 = time.time()
    if timeout <= 0:
        return "skipped: no time left", 0.0
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(grace)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            return f"timed out after {timeout:.0f} s", time.time() - t0
    return ("ok" if rc == 0 else f"failed (exit {rc})"), time.time() - t0


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                            "cpu_count": os.cpu_count()}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformers", "peft", "prefect", "pydantic", "gguf", "kronfluence", "sacrebleu"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


# -- part 1: the influence benchmark ------------------------------------------------------------

INFLUENCE_PHASES = (("train_step", "plain training step (fwd + bwd)"),
                    ("scoring", "our scoring (EK-FAC, 32 seeds, features, Parquet)"),
                    ("factor_covariance", "our factor fitting, covariance pass"),
                    ("factor_lambda", "our factor fitting, Lambda pass"),
                    ("factor_fit", "our factor fitting, both passes"),
                    ("kronfluence_pairwise", "kronfluence EK-FAC pairwise scores"))


def influence_markdown(res: dict[str, Any], command: str) -> str:
    """The benchmark's JSON as the table BENCHMARKS.md uses."""
    head = (f"# Influence benchmark\n\n{res.get('device')}, {res.get('params_M')}M parameters, "
            f"{res.get('tracked_layers')} tracked layers, batch {res.get('batch_size')} x {res.get('seq_len')} "
            f"tokens, {res.get('seeds')} seeds, {res.get('dtype')}, {res.get('repeats')} interleaved rounds "
            f"(medians); seed preconditioning {res.get('precondition_seconds')} s.\n\n    {command}\n\n")
    rows = ["| phase | examples/s | vs training step | range over rounds | peak GiB |", "|---|---|---|---|---|"]
    for key, label in INFLUENCE_PHASES:
        if f"{key}_ex_per_s" not in res:
            continue
        ratio = "1.00" if key == "train_step" else res.get(f"{key}_vs_train")
        rng = res.get(f"{key}_vs_train_range")
        rows.append(f"| {label} | {res[f'{key}_ex_per_s']} | {ratio} | {'-'.join(map(str, rng)) if rng else ''} "
                    f"| {res.get(f'{key}_peak_gib', '')} |")
    return head + "\n".join(rows) + "\n"


def influence_part(suite: Suite, tiny: bool, cap_s: float) -> None:
    out = suite.out / "influence.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_influence.py"), "--json", str(out)]
    cmd += ["--tiny", "--batches", "2", "--repeats", "1"] if tiny else ["--batch-size", "16", "--eig-dtype", "float32"]
    kronfluence = importlib.util.find_spec("kronfluence") is not None
    if not kronfluence:
        cmd.append("--no-kronfluence")
    suite.note(f"influence benchmark (kronfluence {'in' if kronfluence else 'not importable: left out'})")
    status, seconds = run_logged(cmd, suite.log, min(cap_s, suite.remaining() - RESERVE_S))
    shown = " ".join(["python", "bench/bench_influence.py", *cmd[2:]]).replace(str(out), "influence.json")
    if out.exists():
        atomic_write_text(suite.out / "influence.md", influence_markdown(json.loads(out.read_text()), shown))
    suite.save("influence", status=status, seconds=round(seconds, 1), kronfluence=kronfluence, command=shown)
    suite.note(f"influence benchmark: {status} in {seconds:.0f} s")


# -- part 2: the evidence experiment ------------------------------------------------------------

def tiny_config(cfg: GdigConfig) -> GdigConfig:
    """``cfg`` shrunk to minutes on a CPU: tiny Llama, a small pool sample, one or two optimizer
    steps; no low_quality_mt noise (its weak system is Gemma). Methods and scoring stay."""
    raw = cfg.model_dump(mode="json")
    raw["model"] = {"name": "tiny", "device": "cpu", "dtype": "float32",
                    "tiny": {"architecture": "llama", "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                             "num_heads": 2, "vocab_size": 400, "tokenizer_texts": 200}}
    noise = raw["data"]["noise"]
    noise["kinds"] = [k for k in noise["kinds"] if k != "low_quality_mt"]
    noise["weak_mt"] = None
    raw["data"]["pool"]["sample"] = 120
    raw["data"]["seed"]["sample"] = 8
    raw["prompt"]["max_length"] = 64
    raw["reference"]["sample"] = 32
    small = {"max_steps": 2, "batch_size": 8, "bf16": None}
    raw["reference"]["train"] |= small
    raw["finetune"]["train"] |= small | {"max_steps": 1}
    raw["curvature"] |= {"sample": 32, "batch_size": 16, "shard_size": 32, "autocast": "none"}
    raw["scoring"] |= {"batch_size": 16, "shard_size": 64, "feature_dim": 16, "autocast": "none"}
    raw["selection"]["budgets"] = [8, 16]
    raw["evaluation"] |= {"batch_size": 4, "max_new_tokens": 8, "max_sentences": 4, "bf16": None}
    return GdigConfig.model_validate(raw)


def phase_overrides(budgets: list[int], max_seeds: int) -> list[list[str]]:
    """``--set`` lists of the phases: the first budget, every budget, then 2..max_seeds seeds."""
    every = f"selection.budgets=[{','.join(map(str, budgets))}]"
    out = [[f"selection.budgets=[{budgets[0]}]"]] if len(budgets) > 1 else []
    out.append([every])
    for n in range(2, max_seeds + 1):
        out.append([every, f"finetune.seeds=[{','.join(map(str, range(n)))}]"])
    return out


def records(run_dir: Path) -> list[dict[str, Any]]:
    from tasks.runtime.records import read_records

    return [r for p in sorted((run_dir / "records").glob("*.jsonl")) for r in read_records(p)]


def seed_cost_s(run_dir: Path) -> float:
    """Seconds one more finetuning seed costs: the finetunes and evaluations of seed 0 so far."""
    return sum(r.get("seconds") or 0.0 for r in records(run_dir) if r["event"] == "computed"
               and r["stage"].startswith(("finetune/", "evaluation/")) and r["stage"].endswith("/s0"))


def _summaries(run_dir: Path, stage: str) -> list[dict[str, Any]]:
    out = []
    for manifest in sorted((run_dir / "cas" / stage).glob("*/_manifest.json")):
        out.append(json.loads(manifest.read_text(encoding="utf-8"))["summary"])
    return out


def partial_report(run_dir: Path, out_dir: Path, title: str) -> dict[str, Any]:
    """The comparison table of every evaluation finished so far (gdig_core.report.writer), with the time
    of every computed stage from the run records."""
    from gdig_core.report.writer import build_report

    times = [{"stage": r["stage"], "seconds": r.get("seconds")} for r in records(run_dir) if r["event"] == "computed"]
    return build_report(_summaries(run_dir, "evaluation"), _summaries(run_dir, "selection"), out_dir,
                        title=title, stage_times=times)


def write_evidence(suite: Suite, run_dir: Path, phases: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """evidence.json / .md / .png from the last complete pipeline report, and when the last phase
    did not finish, the partial table of everything evaluated so far first."""
    lines = ["# Evidence experiment (bench/gpu_suite.py)\n",
             f"Device: {suite.state.get('environment', {}).get('device')}. "
             + (f"Gemma-3-270M GGUF conversion: {extra['gemma_conversion_s']} s. " if "gemma_conversion_s" in extra else "")
             + "Phases (each a `gdig run` of the same config; later ones reuse the stages earlier ones computed):\n",
             "| phase | overrides | status | wall s |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | `{' '.join(p['overrides'])}` | {p['status']} | {p['seconds']} |" for i, p in enumerate(phases)]
    data: dict[str, Any] = {"phases": phases, **extra}
    report_dir = run_dir / "report"
    complete = next((p for p in reversed(phases) if p["status"] == "ok"), None)
    text = "\n".join(lines) + "\n\n"
    if phases and phases[-1]["status"] != "ok":
        part = partial_report(run_dir, run_dir / "partial-report", "Partial results (evaluations finished so far)")
        data["partial_rows"] = part["rows"]
        text += ("\n" + part["markdown"]).replace("\n#", "\n##") + "\n"
        png = run_dir / "partial-report" / "report.png"
    else:
        png = report_dir / "report.png"
    if complete is not None and (report_dir / "report.md").exists():
        data["rows"] = json.loads((report_dir / "comparison.json").read_text(encoding="utf-8"))
        data["complete_phase"] = phases.index(complete) + 1
        report = (report_dir / "report.md").read_text(encoding="utf-8").replace("](report.png)", "](evidence.png)")
        text += f"## Report of the last complete phase ({data['complete_phase']})\n" + ("\n" + report).replace("\n#", "\n##")
    atomic_write_json(suite.out / "evidence.json", data)
    atomic_write_text(suite.out / "evidence.md", text)
    if png.exists():
        (suite.out / "evidence.png").write_bytes(png.read_bytes())


def evidence_part(suite: Suite, cfg: GdigConfig, run_dir: Path, max_seeds: int, cache: Path) -> None:
    """The evidence phases; ``cache`` is where the Gemma conversion goes (GDIG_CACHE of the runs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    cfg.orchestration.run_dir = str(run_dir)
    config_path = run_dir / "suite-config.yaml"
    import yaml

    atomic_write_text(config_path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    extra: dict[str, Any] = {"config": str(config_path)}
    if cfg.model.name == "gemma-3-270m":
        from gdig_core.training.models import gemma_checkpoint

        suite.note("Gemma-3-270M: GGUF -> safetensors (once; every later load reads the conversion)")
        t0 = time.time()
        gemma_checkpoint(cfg.model.cache_dir or cache)
        extra["gemma_conversion_s"] = round(time.time() - t0, 1)
        suite.save("evidence", gemma_conversion_s=extra["gemma_conversion_s"])
    env = dict(os.environ, PYTHONUNBUFFERED="1", GDIG_CACHE=str(cache))
    phases: list[dict[str, Any]] = []
    for overrides in phase_overrides(cfg.selection.budgets, max_seeds):
        if len(phases) >= 2 and phases[-1]["status"] == "ok":  # extra seeds: only when one fits
            need = seed_cost_s(run_dir) + 30.0
            if need > suite.remaining() - RESERVE_S:
                suite.note(f"no time for another finetuning seed (about {need:.0f} s needed)")
                break
        cmd = [sys.executable, "-m", "gdig_cli.run_cmd", str(config_path), "--json",
               *(arg for o in overrides for arg in ("--set", o))]
        suite.note(f"evidence phase {len(phases) + 1}: {' '.join(overrides)}")
        status, seconds = run_logged(cmd, suite.log, suite.remaining() - RESERVE_S, env)
        phases.append({"overrides": overrides, "status": status, "seconds": round(seconds, 1)})
        write_evidence(suite, run_dir, phases, extra)
        suite.save("evidence", phases=phases)
        suite.note(f"evidence phase {len(phases)}: {status} in {seconds:.0f} s")
        if status != "ok":
            break


def guarded(suite: Suite, part: str, fn: Callable[[], None]) -> bool:
    """Run one part; an exception is recorded (suite.json, traceback in suite.log) and the next
    part still runs: a rare GPU window should bring back whatever worked."""
    try:
        fn()
        return True
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        suite.save(part, error=f"{type(err).__name__}: {err}")
        suite.note(f"{part} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results folder (JSON + markdown)")
    ap.add_argument("--tiny", action="store_true", help="the same code on a CPU in minutes")
    ap.add_argument("--config", type=Path, default=GPU_CONFIG)
    ap.add_argument("--data-dir", default=None, help="data.data_dir (default: the config's)")
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="pipeline run directory, outside --out; a rerun with the same one resumes "
                         "(default: <tmp>/gdig-gpu-suite/{gpu,tiny}; the Gemma conversion goes beside it)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the whole suite")
    ap.add_argument("--influence-cap-s", type=float, default=240.0, help="most seconds for the influence benchmark")
    ap.add_argument("--max-seeds", type=int, default=3, help="finetuning seeds the last phases may go up to")
    ap.add_argument("--skip-influence", action="store_true")
    ap.add_argument("--skip-evidence", action="store_true")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    suite = Suite(out, args.budget_s)
    run_dir = (args.run_dir or Path(tempfile.gettempdir()) / "gdig-gpu-suite" / ("tiny" if args.tiny else "gpu")).resolve()
    cache = Path(os.environ.get("GDIG_CACHE") or run_dir.parent / "gdig-cache")
    suite.state["environment"] = environment()
    suite.state["command"] = " ".join(["bench/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])])
    suite.save()
    suite.note(f"environment: {suite.state['environment']}")
    overrides = [f"data.data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    cfg = load_config(args.config, overrides)
    if args.tiny:
        cfg = tiny_config(cfg)
    ok = True
    if not args.skip_influence:
        ok &= guarded(suite, "influence", lambda: influence_part(suite, args.tiny, args.influence_cap_s))
    if not args.skip_evidence:
        ok &= guarded(suite, "evidence", lambda: evidence_part(suite, cfg, run_dir, args.max_seeds, cache))
    suite.save()
    suite.note(f"done in {time.time() - suite.start:.0f} s; results in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
