#!/usr/bin/env bash
# A method's own strength setting chosen on validation (the rule in uncertainty.py's
# docstring): its published value, a tenth of it, and zero, each trained at seed 0 as
# the comparison trains the method (its own test at one draw: cheap, and not read),
# then evaluated on seed 0's validation tasks with the method's own test-time draws.
#   bash benchmarks/strength_validation.sh blob|mc-dropout [DATA_DIR]   (repository root)
# Then: metalora compare "TAG=RUN/eval/<dir>" ... for the three runs (printed at the end).
set -euo pipefail
METHOD=${1:?"usage: strength_validation.sh blob|mc-dropout [DATA_DIR]"}
DATA=${2:-../shared/data/crossfit}
OUT=runs/benchmarks/uncertainty
PY=${PYTHON:-python}
METALORA=${METALORA:-metalora}
case "$METHOD" in
  blob) SETTING=kl_lr TAG=kl VALUES="0.02 0.002 0" DRAWS=eval_samples N=10 ;;
  mc-dropout) SETTING=dropout TAG=p VALUES="0.1 0.01 0" DRAWS=mc_samples N=8 ;;
  *) echo "strength_validation.sh: unknown method '$METHOD'; valid choices: blob, mc-dropout" >&2
     exit 2 ;;
esac
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
for value in $VALUES; do
  run=$METHOD-$TAG$value-seed0
  if [ ! -f "$OUT/$run/metrics.json" ]; then
    nice -n 19 "$PY" benchmarks/api_job.py "{\"kind\": \"train\", \"settings\": {
      \"learner\": \"$METHOD\", \"tasks\": \"cls45\", \"model\": \"smollm2-135m\",
      \"data_dir\": \"$DATA\", \"max_train_tasks\": 12, \"epochs\": 3, \"eval_every\": 0,
      \"query_cap\": 100, \"adapt_lr\": \"2e-4\", \"dtype\": \"float32\", \"seeds\": [0],
      \"plots\": false, \"tensorboard\": false, \"output_dir\": \"$OUT\",
      \"run_name\": \"$run\", \"lr\": \"3e-4\", \"$SETTING\": \"$value\",
      \"$DRAWS\": 1}}" > "$OUT/$run.console.log" 2>&1
  fi
  if ! ls -d "$OUT/$run"/eval/*-cls45-validation > /dev/null 2>&1; then
    nice -n 19 "$METALORA" eval "$OUT/$run" --split validation --set "$DRAWS=$N" \
      --no-per-task > "$OUT/$run-validation.console.log" 2>&1
  fi
  echo "$SETTING $value=$OUT/$run/$(cd "$OUT/$run" && ls -d eval/*-cls45-validation | tail -n 1)"
done
