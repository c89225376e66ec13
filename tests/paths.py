"""Where the tests find the project and the real MT data (beside the project, never committed;
``GDIG_DATA_DIR`` overrides it): one definition for conftest.py and every test module."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GDIG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data" / "mt"))
