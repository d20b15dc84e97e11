#!/usr/bin/env bash
# The prepared checks of issue 23 for one short GPU window: bash benchmarks/gpu_session.sh [STEP ...]
#
# PREPARED WITHOUT A GPU: nothing here has been run on one yet. First, on the CPU machine: `bash
# benchmarks/gpu_wheels.sh` (the image has no gymnasium or MuJoCo). Then one device call, from the repository root,
# carrying .whl: `bash benchmarks/gpu_session.sh` (all steps; give the call a limit of 600 s: a 15-minute device window
# has no time for a second full run). A rerun of some steps only: `bash benchmarks/gpu_session.sh b c`.
#
# Steps, in this order, each under `timeout`, within BUDGET_S seconds in all (default 560):
#   a  the GPU (nvidia-smi -L), torch, CUDA, gymnasium, MuJoCo and pytest versions
#   b  python benchmarks/graphed_sac.py: the graphed env step against eager (equivalence), ms per env step both ways,
#      the graphed maximum-likelihood minibatch step likewise (at 50k transitions), and the Hopper loop without its
#      model side (100 timed steps each; about 1 minute)
#   e  python benchmarks/speed.py --envs Hopper-v4: the components, then the Hopper loop (steps 5k-6k) eager and with
#      graphed env steps in the same run, each with its breakdown (about 4 minutes); speed.py --quick if under 240 s
#      are left
#   d  python benchmarks/mle_cost.py: one maximum-likelihood training at 5k, 25k, 50k, 125k transitions on CUDA, each
#      ended after the epoch that passes 20 s (about 1.5 minutes)
#   c  with the time left: python -m pytest -q benchmarks/test_benchmarks.py -k graphed: the equivalences as a test, and
#      usbpo.main with graphed env steps through two pool resizes and a resume (about 1.5 minutes)
# Everything goes under $OUT (the device tool brings that folder back): one log per step, the JSON of b and d, and
# summary.txt (one line per step: exit status, seconds). Exit status 124 is a step stopped by its timeout.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/usbpo-gpu-session}
BUDGET_S=${BUDGET_S:-560}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$OUT"
STEPS=${*:-a b e d c}
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
if ! "$PY" -c "import gymnasium, mujoco" 2>/dev/null; then  # the image has neither: the wheels of gpu_wheels.sh
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no gymnasium/mujoco here and no .whl/: run bash benchmarks/gpu_wheels.sh here first, carry .whl" | tee -a "$OUT/summary.txt"
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if wants a; then
  run a_versions 60 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
    '$PY' -c 'import torch, gymnasium, mujoco; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \
\"available\", torch.cuda.is_available(), \"gymnasium\", gymnasium.__version__, \"mujoco\", mujoco.__version__)'; \
    '$PY' -m pytest --version || echo 'no pytest: step c cannot run'; nproc"
fi
if wants b; then
  run b_graphed_sac 150 "$PY" benchmarks/graphed_sac.py --steps 100 --loop-steps 100 --json "$OUT/graphed_sac.json"
fi
if wants e; then
  if [ "$(left)" -ge 240 ]; then
    run e_speed_hopper 330 "$PY" benchmarks/speed.py --envs Hopper-v4
  else
    run e_speed_quick 120 "$PY" benchmarks/speed.py --quick
  fi
fi
if wants d; then
  run d_mle_cost 150 "$PY" benchmarks/mle_cost.py --device cuda --budget-s 20 --json "$OUT/mle_cost.json"
fi
if wants c; then
  run c_pytest_graphed 150 "$PY" -m pytest -q benchmarks/test_benchmarks.py -k graphed -rs -p no:cacheprovider
fi
echo "usbpo gpu_session: done in $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
