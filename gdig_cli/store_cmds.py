"""``gdig rescore RUN_DIR --seed FILE``: score a run's pool against a new seed set from its
projected gradient store (no pass over the pool); ``gdig pins RUN_DIR``: the ``pin:`` section
that reuses a run's reference model and factors, for scheduled runs over a growing pool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rescore", help="score a run's pool against new seeds from its gradient store (no pass over the pool)",
        description="Rerun RUN_DIR's latest configuration with a new seed set on the store path (scoring.path: "
                    "store): the seeds get their backward passes, the pool only a matrix product against the "
                    "stored projected gradients. Later stages (selection, finetunes, evaluation, report) follow "
                    "the configuration; --set overrides any key.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a run made with scoring.store.enabled: true")
    p.add_argument("--seed", required=True, metavar="FILE", help="the new seed set (any dataset format gdig reads)")
    p.add_argument("--seed-tgt", metavar="FILE", help="target side, when --seed is the source of two parallel text files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the run's configuration (repeatable)")
    p.add_argument("--json", action="store_true", help="print the outputs as JSON")
    p.set_defaults(func=rescore)

    q = subparsers.add_parser("pins", help="print the pin: section that reuses a run's reference model and factors")
    q.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    q.set_defaults(func=pins)


def rescore_config(run_dir: Path, seed: str, seed_tgt: str | None, overrides: list[str]):  # noqa: ANN201
    """The run's latest configuration on the store path with the new seed set."""
    from gdig_core.config import ConfigError, load_config
    from tasks.stages.run_start import RUN_CONFIG

    saved = run_dir / RUN_CONFIG
    if not saved.exists():
        raise ConfigError(f"{saved}: no configuration saved there: RUN_DIR must be a gdig run directory")
    seed_path = str(Path(seed).resolve())
    spec = f"data.seed={{path: {json.dumps(seed_path)}" + (f", tgt_path: {json.dumps(str(Path(seed_tgt).resolve()))}"
                                                          if seed_tgt else "") + "}"
    cfg = load_config(saved, [spec, "scoring.path=store", f"orchestration.run_dir={run_dir}", *overrides])
    return cfg


def rescore(args: argparse.Namespace) -> int:
    from gdig_cli.run_cmd import run_config
    from gdig_core.config import ConfigError, load_config
    from tasks.stages.run_start import RUN_CONFIG

    run_dir = Path(args.run_dir).resolve()
    saved = run_dir / RUN_CONFIG
    if saved.exists() and not load_config(saved).scoring.store.enabled:
        raise ConfigError(f"{run_dir} was scored without the gradient store (scoring.store.enabled: false): run it "
                          "once with --set scoring.store.enabled=true (new rows only are scored), then rescore")
    cfg = rescore_config(run_dir, args.seed, args.seed_tgt, args.overrides)
    command = " ".join(["gdig rescore", args.run_dir, "--seed", args.seed,
                        *(["--seed-tgt", args.seed_tgt] if args.seed_tgt else []),
                        *(f"--set {o}" for o in args.overrides)])
    return run_config(cfg, command, args.json)


def pins(args: argparse.Namespace) -> int:
    import yaml

    from gdig_core.config import ConfigError

    outputs = Path(args.run_dir) / "outputs.json"
    try:
        index = json.loads(outputs.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
        pinned = index.get("pins")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{outputs}: cannot read the run's outputs ({err}); has a run finished there?") from None
    if not pinned:
        print(f"gdig: {args.run_dir}: the latest run has no reference model or factors to pin", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump({"pin": pinned}, sort_keys=False))
    return 0
