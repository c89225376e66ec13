#!/usr/bin/env python
"""Screenshot the local Prefect UI showing a finished pipeline run and its artifacts.

    python scripts/screenshot_ui.py RUN_DIR [--out docs/prefect-ui-run.png] [--port 4299]

RUN_DIR is a finished ``gdig run`` directory: its ``.prefect`` holds the SQLite database the
ephemeral server wrote. This starts ``prefect server start`` on that database, finds the latest
completed ``gdig-pipeline`` flow run, and drives headless Debian Chromium over the DevTools
protocol: open the run page, click its Artifacts tab, screenshot; then the report artifact.
Chromium runs with a fresh profile and no network features beyond the loopback UI.
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


class Browser:
    """Headless Debian Chromium driven over the DevTools protocol (a fresh profile per run), so
    the script can click a tab of the single-page UI before taking the screenshot."""

    def __init__(self, size: str) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("Debian chromium is needed: apt-get install chromium")
        self.profile = tempfile.mkdtemp(prefix="gdig-chromium-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={size}",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait(f"http://127.0.0.1:{self.port}/json/version", 60, self.proc)
        pages = api(f"http://127.0.0.1:{self.port}/json/list")
        page = next(p for p in pages if p.get("type") == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._id = 0
        w, h = (int(x) for x in size.split(","))
        self.call("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str) -> object:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

    def goto(self, url: str, ready_text: str, timeout: float = 60) -> None:
        self.call("Page.navigate", url=url)
        self.wait_text(ready_text, timeout)

    def wait_text(self, text: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(f"document.body && document.body.innerText.includes({json.dumps(text)})"):
                time.sleep(1.5)  # let the page finish drawing (graph, tables)
                return
            time.sleep(0.5)
        raise SystemExit(f"the UI never showed {text!r}")

    def click_text(self, text: str) -> None:
        found = self.js(
            "(() => { const els = [...document.querySelectorAll('button, a, [role=tab], li, span')];"
            f" const el = els.find(e => e.textContent.trim() === {json.dumps(text)});"
            " if (el) { el.click(); return true; } return false; })()"
        )
        if not found:
            raise SystemExit(f"no element with text {text!r} to click")

    def screenshot(self, out: Path) -> None:
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(data))
        print(f"wrote {out}")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
            shutil.rmtree(self.profile, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/prefect-ui-run.png"))
    p.add_argument("--artifact-out", type=Path, default=Path("docs/prefect-ui-report.png"))
    p.add_argument("--port", type=int, default=4299)
    p.add_argument("--size", default="1600,1300")
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
        run_id, run_name = runs[0]["id"], runs[0]["name"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser = Browser(args.size)
        try:
            # The run page: state, stage graph, and its Artifacts tab (report + comparison table).
            browser.goto(f"{base}/runs/flow-run/{run_id}", "Subflow Runs")
            browser.click_text("Artifacts")
            browser.wait_text("gdig-report")
            browser.screenshot(args.out)
            # The report artifact itself (its latest version): the markdown comparison table.
            report = api(base + "/api/artifacts/filter", {
                "artifacts": {"key": {"any_": ["gdig-report"]}, "flow_run_id": {"any_": [run_id]}},
                "sort": "CREATED_DESC", "limit": 1,
            })
            browser.goto(f"{base}/artifacts/artifact/{report[0]['id']}", "zero-shot")
            browser.screenshot(args.artifact_out)
        finally:
            browser.close()
        print(f"flow run {run_name} ({run_id})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
