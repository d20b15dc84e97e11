#!/usr/bin/env bash
# The runs behind results/: variants of one code path, same seeds and budget, one process per core
# (OMP_NUM_THREADS=1); each finished run's progress.csv is copied to results/<env>/<variant>_seed<seed>.csv (and a
# CMLO run's model-training intervals to results/<env>/intervals/<variant>_seed<seed>.csv).
#   Usage: [VARIANTS="usbpo mbpo"] [LANES=2] [EXTRA_FLAGS="--flag value"] [USBPO_OUT=DIR] \
#            bash results/run_evidence.sh ENV_ID STEPS SEED...
# Variants: usbpo (default flags), usbpo_authors (--finetune-objective authors), mbpo (--no-finetune),
# usbpo_shift_only (--bias-coef 0), usbpo_bias_only (--shift-coef 0), cmlo_a<ALPHA> (--cmlo-threshold ALPHA,
# e.g. cmlo_a3.0). The runs (seeds outer, variants inner)
# are dealt round-robin to LANES parallel lanes. Run again after a kill (or a session's end), the same
# command continues each unfinished run from its last checkpoint, bit for bit, and skips finished ones; with a
# larger STEPS it extends finished runs (as if started with STEPS); it never deletes a run (move
# runs/evidence/<env>/<variant>_<seed> away to start that run over). The rule of one run is results/evidence_lib.sh
# (shared with sweep.sbatch, the same runs as a Slurm job array); EXTRA_FLAGS and USBPO_OUT are described there.
set -euo pipefail
[ -z "${USBPO_OUT:-}" ] || USBPO_OUT=$(realpath -m "$USBPO_OUT")  # relative to where it was called from
cd "$(dirname "$0")/.."
env_id=$1; steps=$2; shift 2
lanes=${LANES:-2}
# shellcheck source=results/evidence_lib.sh
source results/evidence_lib.sh
list_runs "$@"
mkdir -p "$results" "$runs"
pids=()
for ((lane = 0; lane < lanes; lane++)); do
  # shellcheck disable=SC2086  # "variant seed": two words
  (for ((i = lane; i < ${#run_list[@]}; i += lanes)); do run_one ${run_list[$i]}; done) &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done  # a lane whose run failed stops there, and so does this
exit "$failed"
