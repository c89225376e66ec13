#!/usr/bin/env python
"""Screenshot the local Prefect UI showing a finished pipeline run and its artifacts.

    python scripts/screenshot_ui.py RUN_DIR [--out docs/prefect-ui-run.png] [--port 4299]

RUN_DIR is a finished ``gdig run`` directory: its ``.prefect`` holds the SQLite database the
ephemeral server wrote. This starts ``prefect server start`` on that database, finds the latest
``gdig-pipeline`` flow run, and lets headless Debian Chromium render the run page (with the
Artifacts tab) and the report artifact. Chromium runs with a fresh profile and no network
features beyond the loopback UI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
]


def api(url: str, body: dict | None = None) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"prefect server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def shoot(url: str, out: Path, size: str, budget_ms: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="gdig-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    print(f"wrote {out} ({url})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/prefect-ui-run.png"))
    p.add_argument("--artifact-out", type=Path, default=Path("docs/prefect-ui-report.png"))
    p.add_argument("--port", type=int, default=4299)
    p.add_argument("--size", default="1600,1300")
    p.add_argument("--budget-ms", type=int, default=20000, help="virtual time the UI gets to render")
    args = p.parse_args()

    home = (args.run_dir / ".prefect").resolve()
    if not home.exists():
        raise SystemExit(f"{home} not found: run `gdig run` with orchestration.run_dir={args.run_dir} first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="true",
               # The UI is told where its API is; the default assumes port 4200.
               PREFECT_UI_API_URL=f"http://127.0.0.1:{args.port}/api",
               PREFECT_API_URL=f"http://127.0.0.1:{args.port}/api")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait(base + "/api/health", 120, server)
        runs = api(base + "/api/flow_runs/filter", {
            "flows": {"name": {"any_": ["gdig-pipeline"]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "START_TIME_DESC", "limit": 1,
        })
        if not runs:
            raise SystemExit("no completed gdig-pipeline flow run in this database")
        run_id = runs[0]["id"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shoot(f"{base}/runs/flow-run/{run_id}?tab=Artifacts", args.out, args.size, args.budget_ms)
        shoot(f"{base}/artifacts/key/gdig-report", args.artifact_out, args.size, args.budget_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
