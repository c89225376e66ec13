"""Fault injection: SIGKILL a shrunk pipeline at random moments, resume it, and check the result.

Runs ``gdig run`` (the local ephemeral Prefect server, as a user would) on a small config: first
once without faults (the reference selections and the hashing cost), then in episodes: each
episode starts from an empty run directory, kills the run's whole process group at a random
moment ``--kills-per-episode`` times (each kill after a new start on the same directory), then
lets a last run finish under a time limit (a hang fails it). Reported: kills survived (the final
run succeeded), final selections byte-identical to the uninterrupted run's, hangs, and the share
of wall time spent hashing (XXH3 digests of every reused file).

    python bench/bench_faults.py --kills 20 --seed 0 --json runs/bench-faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "GDIG_FAULTS"}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    return env


def _cmd(config: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "gdig_cli.run_cmd", str(config), "--set", f"orchestration.run_dir={run_dir}"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_to_end(config: Path, run_dir: Path, overrides: list[str], limit: float, log: Path) -> tuple[str, float]:
    """("ok" | "failed" | "hang", seconds)."""
    t0 = time.monotonic()
    with open(log, "a") as fh:
        proc = subprocess.Popen(_cmd(config, run_dir, overrides), cwd=ROOT, env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "hang", time.monotonic() - t0
    return ("ok" if rc == 0 else "failed"), time.monotonic() - t0


def run_and_kill(config: Path, run_dir: Path, overrides: list[str], after: float, log: Path) -> bool:
    """Start a run and SIGKILL its process group after ``after`` seconds; False if it ended first."""
    with open(log, "a") as fh:
        proc = subprocess.Popen(_cmd(config, run_dir, overrides), cwd=ROOT, env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(after)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True


def selections(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "selection").glob("*/*/selected.jsonl"))}


def hashing(run_dir: Path) -> dict[str, float]:
    files = sorted((run_dir / "records").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    for line in reversed(files[-1].read_text().splitlines()):
        rec = json.loads(line)
        if rec["event"] == "hashing":
            return {k: rec[k] for k in ("files", "bytes", "seconds")}
    return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "test-tiny.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kills-per-episode", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-faults")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    log = args.out / "runs.log"
    ref_dir = args.out / "reference"
    status, full = run_to_end(args.config, ref_dir, args.overrides, 1800, log)
    if status != "ok":
        print(f"the uninterrupted run {status}; see {log}", file=sys.stderr)
        return 1
    expected = selections(ref_dir)
    ref_hash = hashing(ref_dir)
    print(f"uninterrupted run: {full:.1f} s; hashing {ref_hash.get('seconds', 0):.3f} s over "
          f"{ref_hash.get('bytes', 0) / 1e6:.1f} MB in {ref_hash.get('files', 0):.0f} files", flush=True)

    limit = 3 * full + 120
    episodes: list[dict] = []
    kills = 0
    while kills < args.kills:
        run_dir = args.out / f"episode-{len(episodes):02d}"
        moments: list[float] = []
        while len(moments) < args.kills_per_episode and kills < args.kills:
            after = rng.uniform(2.0, full)
            if run_and_kill(args.config, run_dir, args.overrides, after, log):
                moments.append(round(after, 1))
                kills += 1
            else:
                break  # the run finished before the kill: this episode is complete
        status, seconds = run_to_end(args.config, run_dir, args.overrides, limit, log)
        same = status == "ok" and selections(run_dir) == expected
        ep = {"kills_at_s": moments, "final": status, "final_seconds": round(seconds, 1), "identical": same,
              "hashing": hashing(run_dir) if status == "ok" else {}}
        episodes.append(ep)
        print(json.dumps(ep), flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    survived = sum(len(e["kills_at_s"]) for e in episodes if e["final"] == "ok")
    result = {
        "config": str(args.config), "overrides": args.overrides, "seed": args.seed,
        "uninterrupted_seconds": round(full, 1), "uninterrupted_hashing": ref_hash,
        "hashing_share_of_wall": (ref_hash.get("seconds", 0) / full) if full else None,
        "kills": kills, "kills_survived": survived, "episodes": len(episodes),
        "identical_final_selections": sum(e["identical"] for e in episodes),
        "hangs": sum(e["final"] == "hang" for e in episodes),
        "failed": sum(e["final"] == "failed" for e in episodes),
        "episode_details": episodes,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "episode_details"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["hangs"] == 0 and result["identical_final_selections"] == len(episodes) else 1


if __name__ == "__main__":
    sys.exit(main())
