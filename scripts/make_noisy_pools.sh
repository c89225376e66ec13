#!/usr/bin/env bash
# Noisy pools for the G-DIG-versus-baselines experiment (configs/experiment-noisy-*.yaml):
# 30% of each WMT17-20 pool corrupted, deterministically, every pair labelled (`noise` column).
# The third-language targets come from the other direction's pool (never from a test set).
# The fifth kind, low-quality MT, needs the base model's zero-shot output; on a GPU machine add it
# with --kinds ...,low_quality_mt --mt-hypotheses FILE (JSONL of {id, hyp}).
set -euo pipefail
DATA=${GDIG_DATA_DIR:-../shared/data/mt}
OUT=${1:-runs/noisy-pools}
GDIG=${GDIG:-.venv/bin/gdig}
mkdir -p "$OUT"
python3 - "$DATA" "$OUT" <<'PY'
import json, sys
data, out = sys.argv[1], sys.argv[2]
for pair, other in (("de-en", "zh-en"), ("zh-en", "de-en")):
    with open(f"{data}/{other}/pool.wmt17-20.jsonl", encoding="utf-8") as fh, \
         open(f"{out}/third-language.{pair}.txt", "w", encoding="utf-8") as dst:
        for line in fh:
            dst.write(json.loads(line)["src"].replace("\n", " ") + "\n")
PY
"$GDIG" data corrupt "$DATA/de-en/pool.wmt17-20.jsonl" "$OUT/pool.de-en.noisy.jsonl" \
  --fraction 0.3 --seed 0 --src-lang de --tgt-lang en --third-language "$OUT/third-language.de-en.txt"
"$GDIG" data corrupt "$DATA/zh-en/pool.wmt17-20.jsonl" "$OUT/pool.zh-en.noisy.jsonl" \
  --fraction 0.3 --seed 0 --src-lang zh --tgt-lang en --third-language "$OUT/third-language.zh-en.txt"
