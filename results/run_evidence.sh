#!/usr/bin/env bash
# The runs behind results/: variants of one code path, same seeds and budget, one process per core
# (OMP_NUM_THREADS=1); each finished run's progress.csv is copied to results/<env>/<variant>_seed<seed>.csv (and a
# CMLO run's model-training intervals to results/<env>/intervals/<variant>_seed<seed>.csv).
#   Usage: [VARIANTS="usbpo mbpo"] [LANES=2] bash results/run_evidence.sh ENV_ID STEPS SEED...
# Variants: usbpo (default flags), usbpo_authors (--finetune-objective authors), mbpo (--no-finetune),
# usbpo_shift_only (--bias-coef 0), usbpo_bias_only (--shift-coef 0), cmlo_a<ALPHA> (--cmlo-threshold ALPHA,
# e.g. cmlo_a3.0). The runs (seeds outer, variants inner)
# are dealt round-robin to LANES parallel lanes. Run again after a kill (or a session's end), the same
# command continues each unfinished run from its last checkpoint, bit for bit, and skips finished ones;
# delete runs/evidence/<env>/<variant>_<seed> to start that run over.
set -euo pipefail
cd "$(dirname "$0")/.."
env_id=$1; steps=$2; shift 2
variants=${VARIANTS:-usbpo mbpo}; lanes=${LANES:-2}
mkdir -p "results/$env_id" "runs/evidence/$env_id"
flags() {
  case $1 in
    usbpo) echo "" ;;
    usbpo_authors) echo "--finetune-objective authors" ;;
    mbpo) echo "--no-finetune" ;;
    usbpo_shift_only) echo "--bias-coef 0" ;;
    usbpo_bias_only) echo "--shift-coef 0" ;;
    cmlo_a*) echo "--cmlo-threshold ${1#cmlo_a}" ;;
    *) echo "run_evidence.sh: unknown variant '$1'" >&2; exit 2 ;;
  esac
}
run() {  # variant seed
  local flag dir="runs/evidence/$env_id/$1_$2"
  flag=$(flags "$1")
  local run_dirs=("$dir"/*/)  # the run's own folder, named by usbpo.py
  if [ -f "${run_dirs[0]}progress.csv" ] && [ "$(tail -n 1 "${run_dirs[0]}progress.csv" | cut -d, -f1)" = "$steps" ]; then
    :  # finished before
  elif [ -f "${run_dirs[0]}checkpoint.pt" ] && grep -q "\"total_timesteps\": $steps," "${run_dirs[0]}config.json"; then
    echo "continuing from ${run_dirs[0]}checkpoint.pt" >> "$dir.log"
    OMP_NUM_THREADS=1 .venv/bin/python usbpo.py --resume "${run_dirs[0]}" >> "$dir.log" 2>&1
  else
    rm -rf "$dir"
    # shellcheck disable=SC2086  # $flag is zero or more words
    OMP_NUM_THREADS=1 .venv/bin/python usbpo.py --env-id "$env_id" --seed "$2" --total-timesteps "$steps" $flag \
      --exp-name "$1" --no-progress --runs-dir "$dir" > "$dir.log" 2>&1
  fi
  cp "$dir"/*/progress.csv "results/$env_id/$1_seed$2.csv"
  if [[ $1 == cmlo_* ]]; then  # the steps between its model trainings, for plot.py's CMLO figure
    mkdir -p "results/$env_id/intervals"
    .venv/bin/python results/intervals.py "$dir"/*/ "results/$env_id/intervals/$1_seed$2.csv"
  fi
}
jobs=()
for seed in "$@"; do for variant in $variants; do flags "$variant" > /dev/null; jobs+=("$variant $seed"); done; done
for ((lane = 0; lane < lanes; lane++)); do
  (for ((i = lane; i < ${#jobs[@]}; i += lanes)); do run ${jobs[$i]}; done) &
done
wait
