#!/usr/bin/env bash
# Time `make demo` from a clean clone of this repository (committed files only).
#   scripts/demo_from_clean_clone.sh [CLONE_DIR]
# The clone goes beside this checkout (the data lives at ../shared/data/mt). With
# GDIG_REUSE_VENV=path/to/.venv the clone's fresh venv sees that venv's packages (no downloads;
# the project itself is still installed from the clone); without it `make install` downloads all.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
DST="${1:-$(dirname "$SRC")/gdig-clean-clone}"
rm -rf "$DST"
git clone -q "$SRC" "$DST"
cd "$DST"
if [[ -n "${GDIG_REUSE_VENV:-}" ]]; then
  python3 -m venv .venv
  site=$(ls -d "$GDIG_REUSE_VENV"/lib/python3*/site-packages)
  echo "$site" > "$(ls -d .venv/lib/python3*/site-packages)/zz_reuse_deps.pth"
fi
start=$(date +%s)
make demo
echo "make demo from a clean clone: $(( $(date +%s) - start )) s (clone: $DST)"
