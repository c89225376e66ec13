"""The ``gdig`` command line: one subcommand module per area, each exposing ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module registers its subcommands with add_parser(subparsers) and sets ``func`` on them.
COMMAND_MODULES = [
    "gdig_cli.data_cmd",
    "gdig_cli.run_cmd",
    "gdig_cli.train_cmds",
    "gdig_cli.explain_cmd",
    "gdig_cli.store_cmds",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdig",
        description="G-DIG: gradient-based diverse and high-quality instruction data selection for MT.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Call the subcommand; a user error (bad config, data, option, corrupt or escaping path) or an
    output the disk refused is one line naming its cause, exit status 2, never a traceback."""
    from gdig_core.config import ConfigError
    from gdig_core.data.pairs import DataError
    from gdig_core.integrity import CorruptFileError
    from gdig_core.names import PathEscapeError
    from gdig_core.write_faults import OutputWriteError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, CorruptFileError, PathEscapeError, OutputWriteError) as err:
        print(f"gdig: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a run starts (a running pipeline stops in tasks.runtime.shutdown)
        print("gdig: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    # A file name that is not UTF-8 (argv decodes it with surrogate escapes) must print, not crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
