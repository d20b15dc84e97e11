# shellcheck shell=bash disable=SC2154  # env_id and steps: set by the script that sources this file
# The rule of one evidence run, shared by run_evidence.sh (lanes on one machine) and sweep.sbatch (a Slurm array):
# finished -> skip; a checkpoint of the same budget in config.json -> --resume; of a smaller budget -> --resume with
# --total-timesteps STEPS (extended); of a larger budget -> refused; a folder without a checkpoint is moved aside to
# <folder>.no-checkpoint-<time> and the run starts over; none -> a new run. No run is ever deleted. Then the run's
# progress.csv is copied to results/<env>/<variant>_seed<seed>.csv (and a CMLO run's model-training intervals to
# results/<env>/intervals/). Sourced in the repository root once env_id and steps are set; runs/ and results/ are
# under $USBPO_OUT when it is set (an absolute path), else in the repository; RESULTS_DIR replaces results/.
# EXTRA_FLAGS: more usbpo.py flags for new runs (ahead of the script's own, which win: --env-id, --seed,
# --total-timesteps, --exp-name, --runs-dir).
runs=${USBPO_OUT:+$USBPO_OUT/}runs/evidence/$env_id
results=${RESULTS_DIR:-${USBPO_OUT:+$USBPO_OUT/}results}/$env_id

flags() {  # the usbpo.py flags of a variant
  case $1 in
    usbpo) echo "" ;;
    usbpo_authors) echo "--finetune-objective authors" ;;
    mbpo) echo "--no-finetune" ;;
    usbpo_shift_only) echo "--bias-coef 0" ;;
    usbpo_bias_only) echo "--shift-coef 0" ;;
    cmlo_a*) echo "--cmlo-threshold ${1#cmlo_a}" ;;
    *) echo "${0##*/}: unknown variant '$1'; choose from usbpo usbpo_authors mbpo usbpo_shift_only" \
         "usbpo_bias_only cmlo_a<ALPHA>" >&2; return 2 ;;
  esac
}

list_runs() {  # SEED...: the runs as "variant seed" in the array run_list, seeds outer, variants inner
  run_list=()
  local seed variant
  for seed in "$@"; do
    for variant in ${VARIANTS:-usbpo mbpo}; do flags "$variant" > /dev/null; run_list+=("$variant $seed"); done
  done
}

new_run_argv() {  # variant seed: the command line of a new run, in the array argv
  local words flag extra
  words=$(flags "$1")
  read -ra flag <<< "$words"
  read -ra extra <<< "${EXTRA_FLAGS:-}"
  argv=("${extra[@]}" --env-id "$env_id" --seed "$2" --total-timesteps "$steps" "${flag[@]}" --exp-name "$1" --no-progress
        --runs-dir "$runs/$1_$2")
}

run_state() {  # variant seed: sets run_dir (the run's own folder, named by usbpo.py), budget (its saved
  local run_dirs=("$runs/$1_$2"/*/)  # --total-timesteps) and state: finished, resumable, extendable, larger_budget,
  run_dir=${run_dirs[0]}             # no_checkpoint or new
  budget=$(grep -o '"total_timesteps": [0-9]*' "${run_dir}config.json" 2> /dev/null | cut -d' ' -f2 || :)
  if [ -f "${run_dir}progress.csv" ] && [ "$(tail -n 1 "${run_dir}progress.csv" | cut -d, -f1)" = "$steps" ]; then
    state=finished
  elif [ -f "${run_dir}checkpoint.pt" ] && [ "$budget" = "$steps" ]; then
    state=resumable
  elif [ -f "${run_dir}checkpoint.pt" ] && [ "$budget" -lt "$steps" ]; then
    state=extendable
  elif [ -f "${run_dir}checkpoint.pt" ]; then
    state=larger_budget
  elif [ -d "$runs/$1_$2" ]; then
    state=no_checkpoint
  else
    state=new
  fi
}

refuse_larger_budget() {  # variant seed (after run_state): the one-line refusal of a run made with a larger budget
  echo "${0##*/}: $runs/$1_$2 holds a run of $budget steps, more than $steps: give its budget (or a larger one)," \
    "or move the folder away to start that run over" >&2
}

run_usbpo() { OMP_NUM_THREADS=1 .venv/bin/python usbpo.py "$@"; }  # one process per core; sweep.sbatch redefines it

run_one() {  # variant seed: run, continue or skip the run by the rule above; then copy its results
  local dir="$runs/$1_$2" state run_dir
  run_state "$1" "$2"
  if [ "$state" = larger_budget ]; then
    refuse_larger_budget "$1" "$2"
    return 2
  elif [ "$state" = resumable ] || [ "$state" = extendable ]; then
    echo "continuing from ${run_dir}checkpoint.pt to $steps steps" >> "$dir.log"
    run_usbpo --resume "$run_dir" --total-timesteps "$steps" >> "$dir.log" 2>&1
  elif [ "$state" != finished ]; then
    if [ "$state" = no_checkpoint ]; then  # nothing to continue from, but kept
      mv "$dir" "$dir.no-checkpoint-$(date +%s)"
    fi
    new_run_argv "$1" "$2"
    run_usbpo "${argv[@]}" > "$dir.log" 2>&1
  fi
  cp "$dir"/*/progress.csv "$results/$1_seed$2.csv"
  if [[ $1 == cmlo_* ]]; then  # the steps between its model trainings, for plot.py's CMLO figure
    mkdir -p "$results/intervals"
    .venv/bin/python results/intervals.py "$dir"/*/ "$results/intervals/$1_seed$2.csv"
  fi
}
