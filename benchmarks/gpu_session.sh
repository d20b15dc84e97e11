#!/usr/bin/env bash
# The prepared checks of issue 23 for one short GPU window: bash benchmarks/gpu_session.sh [STEP ...]
#
# PREPARED WITHOUT A GPU: nothing here has been run on one yet. First run, from the repository root on the device
# machine: `bash benchmarks/gpu_session.sh` (all steps; give the call a limit of 600 s: a 15-minute device window has
# no time for a second full run). A rerun of some steps only: `bash benchmarks/gpu_session.sh b c`.
#
# Steps, in priority order, each under `timeout`, within BUDGET_S seconds in all (default 540):
#   a  the GPU (nvidia-smi -L), torch, CUDA, gymnasium, MuJoCo and pytest versions
#   b  python benchmarks/graphed_sac.py: the graphed env step against eager (equivalence), ms per env step both ways,
#      the graphed maximum-likelihood minibatch step likewise (at 50k transitions), and the Hopper loop without its
#      model side (about 1 minute)
#   c  python -m pytest -q test_usbpo.py -k graphed: the equivalence as a test, and usbpo.main with graphed env steps
#      through two pool resizes and a resume (about 1.5 minutes)
#   e  python benchmarks/speed.py --envs Hopper-v4: the components, then the Hopper loop (steps 5k-6k) eager and with
#      graphed env steps in the same run, each with its breakdown (about 3.5 minutes); speed.py --quick if under 240 s
#      are left
#   d  with the time left: python benchmarks/mle_cost.py: one maximum-likelihood training at 5k, 25k, 50k, 125k
#      transitions on CUDA, each ended after the epoch that passes 30 s (about 2.5 minutes)
# Everything goes under $OUT (the device tool brings that folder back): one log per step, the JSON of b and d, and
# summary.txt (one line per step: exit status, seconds). Exit status 124 is a step stopped by its timeout.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/usbpo-gpu-session}
BUDGET_S=${BUDGET_S:-540}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$OUT"
STEPS=${*:-a b c e d}
START=$SECONDS

left() { echo $((BUDGET_S - (SECONDS - START))); }

# run NAME CAP_S COMMAND...: the command under timeout (its cap, or the budget left), logged to $OUT/NAME.log
run() {
  local name=$1 cap=$2 limit t0 rc
  shift 2
  limit=$(left)
  if [ "$limit" -lt 15 ]; then
    echo "== $name: skipped, $limit s of the budget left" | tee -a "$OUT/summary.txt"
    return 0
  fi
  [ "$cap" -lt "$limit" ] && limit=$cap
  echo "== $name (timeout ${limit} s): $*"
  t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

wants() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

echo "usbpo gpu_session: steps '$STEPS', budget ${BUDGET_S} s, python $PY, output in $OUT" | tee "$OUT/summary.txt"
if wants a; then
  run a_versions 60 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
    '$PY' -c 'import torch, gymnasium, mujoco; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \
\"available\", torch.cuda.is_available(), \"gymnasium\", gymnasium.__version__, \"mujoco\", mujoco.__version__)'; \
    '$PY' -m pytest --version || echo 'no pytest: step c cannot run'; nproc"
fi
if wants b; then
  run b_graphed_sac 180 "$PY" benchmarks/graphed_sac.py --json "$OUT/graphed_sac.json"
fi
if wants c; then
  run c_pytest_graphed 150 "$PY" -m pytest -q test_usbpo.py -k graphed -rs -p no:cacheprovider
fi
if wants e; then
  if [ "$(left)" -ge 240 ]; then
    run e_speed_hopper 600 "$PY" benchmarks/speed.py --envs Hopper-v4
  else
    run e_speed_quick 120 "$PY" benchmarks/speed.py --quick
  fi
fi
if wants d; then
  run d_mle_cost 240 "$PY" benchmarks/mle_cost.py --device cuda --budget-s 30 --json "$OUT/mle_cost.json"
fi
echo "usbpo gpu_session: done in $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
