#!/usr/bin/env bash
# Start one Prefect process worker per GPU on this machine, each pinned to its GPU with
# CUDA_VISIBLE_DEVICES (flow runs inherit the worker's environment) and running one flow at a time.
#   deployments/start_gpu_workers.sh [POOL] [GPU_IDS]     e.g.  deployments/start_gpu_workers.sh gdig-gpu 0,1,2,3
# Needs PREFECT_API_URL pointing at the server. Stop with: kill $(cat runs/workers/*.pid)
set -euo pipefail
POOL="${1:-gdig-gpu}"
GPUS="${2:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, || echo 0)}"
LOG_DIR="${GDIG_WORKER_LOGS:-runs/workers}"
mkdir -p "$LOG_DIR"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://head-node:4200/api}"
IFS=, read -ra IDS <<< "$GPUS"
for gpu in "${IDS[@]}"; do
  CUDA_VISIBLE_DEVICES="$gpu" nohup prefect worker start --pool "$POOL" --type process \
    --name "$(hostname)-gpu$gpu" --limit 1 > "$LOG_DIR/worker-gpu$gpu.log" 2>&1 &
  echo $! > "$LOG_DIR/worker-gpu$gpu.pid"
  echo "worker for GPU $gpu: pid $!, log $LOG_DIR/worker-gpu$gpu.log"
done
