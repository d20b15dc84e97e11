#!/usr/bin/env bash
# The pre-registered campaign (results/README.md, "Pre-registration"), stage by stage in its order, two runs at a time,
# one thread each. Run it again after a kill or a session's end: a finished stage is skipped (each of its runs has its
# results CSV with a row at the stage's budget), and the runs of the unfinished one continue from their checkpoints
# (run_evidence.sh). The 15k stages extend the 8k runs, which then equal runs started with 15k.
# Its CSVs go to results/campaign/<env>/ (under $USBPO_OUT when set), apart from the earlier bases' in results/<env>/.
#   Usage: [USBPO_OUT=DIR] bash results/campaign.sh
set -euo pipefail
[ -z "${USBPO_OUT:-}" ] || export USBPO_OUT=$(realpath -m "$USBPO_OUT")
cd "$(dirname "$0")/.."
export LANES=2 RESULTS_DIR=${USBPO_OUT:+$USBPO_OUT/}results/campaign

stage() {  # "VARIANTS" ENV_ID STEPS SEED...: run_evidence.sh, unless every run has its CSV at STEPS already
  local variants=$1 env_id=$2 steps=$3 variant seed done=1
  shift 3
  for seed in "$@"; do
    for variant in $variants; do
      grep -q "^$steps," "$RESULTS_DIR/$env_id/${variant}_seed$seed.csv" 2> /dev/null || done=0
    done
  done
  if [ "$done" = 1 ]; then
    echo "campaign: $env_id $steps ($variants; seeds $*): done"
  else
    echo "campaign: $env_id $steps ($variants; seeds $*): $(date -u '+%F %T') UTC"
    VARIANTS=$variants bash results/run_evidence.sh "$env_id" "$steps" "$@"
  fi
}

stage "mbpo usbpo" InvertedPendulum-v4 5000 1 2 3  # 0: does the authors' base still learn?
stage "mbpo usbpo usbpo_authors" InvertedDoublePendulum-v4 8000 1 2 3 4 5  # 1: the interim
stage "mbpo usbpo" InvertedDoublePendulum-v4 8000 6 7 8 9 10
stage "mbpo usbpo usbpo_authors" InvertedDoublePendulum-v4 15000 1 2 3 4 5  # 2: the primary budget
stage "mbpo usbpo" InvertedDoublePendulum-v4 15000 6 7 8 9 10
