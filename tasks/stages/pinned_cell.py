"""Entry point of a child process that runs one cell for the pipeline on the one GPU it sees
(``python -m tasks.stages.pinned_cell SPEC.json``; started by ``tasks.stages.local_cells``)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from gdig_core.config import GdigConfig
    from tasks.runtime.records import start_records_at
    from tasks.stages.cells import Cell, run_cell

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if spec.get("records"):
        start_records_at(Path(spec["records"]))  # the pipeline's record file: one story per run
    run_cell(GdigConfig.model_validate(spec["config"]), spec["run_dir"], tuple(spec["base"]),
             Cell.model_validate(spec["cell"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
