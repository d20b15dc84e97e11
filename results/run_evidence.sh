#!/usr/bin/env bash
# The runs behind results/: USB-PO and its own --no-finetune (plain MBPO), same seeds and budget.
# Two lanes, one process per core (OMP_NUM_THREADS=1); each finished run's progress.csv is copied to
# results/<env>/<variant>_seed<seed>.csv.   Usage: bash results/run_evidence.sh ENV_ID STEPS SEED...
# Run again after a kill (or a session's end), the same command continues each unfinished run from its
# last checkpoint, bit for bit, and skips finished ones; delete runs/evidence/<env>/<variant>_<seed> to
# start that run over.
set -euo pipefail
cd "$(dirname "$0")/.."
env_id=$1; steps=$2; shift 2
mkdir -p "results/$env_id" "runs/evidence/$env_id"
run() {  # variant seed
  local flag="" dir="runs/evidence/$env_id/$1_$2"
  [ "$1" = mbpo ] && flag="--no-finetune"
  local run_dirs=("$dir"/*/)  # the run's own folder, named by usbpo.py
  if [ -f "${run_dirs[0]}progress.csv" ] && [ "$(tail -n 1 "${run_dirs[0]}progress.csv" | cut -d, -f1)" = "$steps" ]; then
    :  # finished before
  elif [ -f "${run_dirs[0]}checkpoint.pt" ] && grep -q "\"total_timesteps\": $steps," "${run_dirs[0]}config.json"; then
    echo "continuing from ${run_dirs[0]}checkpoint.pt" >> "$dir.log"
    OMP_NUM_THREADS=1 .venv/bin/python usbpo.py --resume "${run_dirs[0]}" >> "$dir.log" 2>&1
  else
    rm -rf "$dir"
    OMP_NUM_THREADS=1 .venv/bin/python usbpo.py --env-id "$env_id" --seed "$2" --total-timesteps "$steps" $flag \
      --no-progress --runs-dir "$dir" > "$dir.log" 2>&1
  fi
  cp "$dir"/*/progress.csv "results/$env_id/$1_seed$2.csv"
}
for seed in "$@"; do run usbpo "$seed"; done &
for seed in "$@"; do run mbpo "$seed"; done &
wait
