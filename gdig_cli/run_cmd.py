"""``gdig run CONFIG [--set k=v ...]``: the whole pipeline as a Prefect flow run.

SIGTERM or SIGINT stops it at once: its children (the Prefect server) stopped, the run directory's
lock released, exit status 128 + the signal (``tasks.runtime.shutdown``); a rerun resumes.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral server whose SQLite database lives in
``<run_dir>/.prefect``, so the command works on a fresh offline machine; with it, the run shows up
on that server (and shard runs can go to its workers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gdig_core.config import GdigConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the pipeline (data -> scores -> selection -> finetune -> report)")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set selection.budgets=[100,200] (repeatable)")
    p.add_argument("--json", action="store_true", help="print the outputs as JSON")
    p.set_defaults(func=run)


def _note(message: str) -> None:
    print(f"gdig: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from gdig_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    command = " ".join(["gdig run", args.config, *(f"--set {o}" for o in args.overrides)])
    return run_config(cfg, command, args.json)


def execute_pipeline(cfg: GdigConfig, command: str, run_dir: Path) -> dict:
    """The pipeline flow on this process's Prefect (a local server under ``run_dir`` unless
    PREFECT_API_URL is set); the outputs it publishes."""
    from tasks.runtime.env import configure_local_prefect

    configure_local_prefect(run_dir)  # before Prefect is imported
    from flows.pipeline import gdig_pipeline

    return gdig_pipeline(config=cfg, command=command)


def _stopped(run_dir: Path) -> Callable[[int], None]:
    """What a SIGTERM or SIGINT does mid-run: stop the children, release the lock, say so."""
    from tasks.runtime import run_lock
    from tasks.runtime.shutdown import stop_children

    def on_stop(signum: int) -> None:
        stopped = stop_children()
        run_lock.release(run_dir)
        _note(f"stopped by {signal.Signals(signum).name}: {len(stopped)} child process(es) stopped (the Prefect "
              f"server among them), run directory {run_dir} released; run the same command again to resume")

    return on_stop


def run_config(cfg: GdigConfig, command: str, as_json: bool) -> int:
    """Check, lock and run the pipeline on ``cfg``; print where its outputs are (``gdig run`` and
    ``gdig rescore``). ``command`` is quoted in the report."""
    from gdig_core.preflight import preflight
    from gdig_core.write_faults import write_fault_message
    from tasks.runtime.run_lock import RunDirLocked, run_lock
    from tasks.runtime.shutdown import run_stoppable
    from tasks.stages.pins import check_pins

    if cfg.orchestration.shard_mode == "deployment" and not os.environ.get("PREFECT_API_URL"):
        # An ephemeral server has no workers: shard runs would wait forever.
        print("gdig: shard_mode 'deployment' needs a Prefect server with workers: set PREFECT_API_URL "
              "(see deployments/README.md)", file=sys.stderr)
        return 2
    preflight(cfg)  # seconds, before the Prefect server starts
    check_pins(cfg, verify_bytes=False)  # a wrong pinned hash is refused now; the bytes once the run holds its lock
    run_dir = Path(cfg.orchestration.run_dir).resolve()
    cfg.orchestration.run_dir = str(run_dir)
    orch = cfg.orchestration
    try:
        # Before Prefect starts: the local server's database lives in this directory too.
        with run_lock(run_dir, orch.on_locked, orch.lock_wait_seconds, notify=_note):
            try:
                outputs = run_stoppable(lambda: execute_pipeline(cfg, command, run_dir), _stopped(run_dir))
            except Exception as err:  # noqa: BLE001 - the flow run's logs hold the traceback
                # A full or read-only disk ends the flow in another exception: name the file it could not write.
                fault = write_fault_message(err)
                print(f"gdig: error: {fault}" if fault else f"gdig: the pipeline failed: {type(err).__name__}: {err}",
                      file=sys.stderr)
                return 1
    except RunDirLocked as err:
        print(f"gdig: error: {err}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(outputs, indent=2))
        return 0
    print(f"\nreport:   {outputs['report']}")
    print(f"plot:     {outputs['report_png']}")
    print("selected data:")
    for name, path in outputs["selected"].items():
        print(f"  {name:<16} {path}")
    print(f"scores:   {outputs['scores']}")
    print(f"records:  {outputs['records']}")
    print(f"UI:       see docs/UI.md (PREFECT_HOME={run_dir / '.prefect'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m gdig_cli.run_cmd`` (tests use it, independent of main.py)."""
    parser = argparse.ArgumentParser(prog="gdig")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(argv if argv is not None else sys.argv[1:])])
    from gdig_cli.main import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
