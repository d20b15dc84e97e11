#!/usr/bin/env bash
# Behaviour fingerprint of usbpo.py, for refactors that must change nothing: the md5 of the 19 non-timing columns of
# progress.csv for three tiny seeded Hopper runs (USB-PO, the authors' loss, CMLO) and, with FROM=<git revision>, of a
# run whose 500-step checkpoint was written by that revision's usbpo.py and is continued to 750 steps by today's (it
# must equal the USB-PO run's: old checkpoints stay resumable). One thread per run, two runs at a time.
#   Usage: [FROM=REV] bash benchmarks/behaviour_md5.sh      (a few minutes on an idle 2-core machine)
# REV must know --min-pool-size (added after 71fcd74; before it, SAC started at --learning-starts, as with 0 here).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
py="$PWD/.venv/bin/python"
tiny=(--env-id Hopper-v4 --learning-starts 250 --min-pool-size 0 --epoch-length 250 --model-train-freq 250
      --rollout-batch-size 500 --updates-per-step 2 --eval-episodes 1 --finetune-steps 20 --no-progress --total-timesteps 750)
run() { OMP_NUM_THREADS=1 "$py" usbpo.py "${tiny[@]}" --runs-dir "$out/$1" "${@:2}" > "$out/$1.log"; }
md5() { cut -d, -f1-19 "$out/$1"/*/progress.csv | md5sum | cut -c1-12; }
run w2 & run authors --finetune-objective authors; wait
run cmlo --cmlo-threshold 3 &
if [ -n "${FROM:-}" ]; then
  mkdir -p "$out/old" && git show "$FROM:usbpo.py" > "$out/old/usbpo.py"
  (cd "$out/old" && OMP_NUM_THREADS=1 "$py" usbpo.py "${tiny[@]}" --total-timesteps 500 --runs-dir "$out/from" > /dev/null)
  OMP_NUM_THREADS=1 "$py" usbpo.py --resume "$out"/from/*/ --total-timesteps 750 > /dev/null
fi
wait
echo "w2 $(md5 w2)  authors $(md5 authors)  cmlo $(md5 cmlo)${FROM:+  from-$FROM-resumed $(md5 from)}"
rm -rf "$out"
