#!/usr/bin/env bash
# BLoB's kl_lr chosen on validation (the rule in uncertainty.py's docstring): trains
# the one candidate not yet trained, then evaluates the three candidates on seed 0's
# validation tasks with 10 test draws. Runs niced, after the comparison's own jobs.
#   bash benchmarks/blob_validation.sh [DATA_DIR]   (from the repository root)
# Compare: metalora compare "kl_lr 0.02=RUN/eval/<dir>" "kl_lr 0.002=..." "kl_lr 0=..."
set -euo pipefail
DATA=${1:-../shared/data/crossfit}
OUT=runs/benchmarks/uncertainty
PY=${PYTHON:-python}
METALORA=${METALORA:-metalora}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ ! -f "$OUT/blob-kl0.002-seed0/metrics.json" ]; then
  # its own test uses one draw (cheap): the choice reads validation only
  nice -n 19 "$PY" benchmarks/api_job.py "{\"kind\": \"train\", \"settings\": {
    \"learner\": \"blob\", \"tasks\": \"cls45\", \"model\": \"smollm2-135m\",
    \"data_dir\": \"$DATA\", \"max_train_tasks\": 12, \"epochs\": 3, \"eval_every\": 0,
    \"query_cap\": 100, \"adapt_lr\": \"2e-4\", \"dtype\": \"float32\", \"seeds\": [0],
    \"plots\": false, \"tensorboard\": false, \"output_dir\": \"$OUT\",
    \"run_name\": \"blob-kl0.002-seed0\", \"lr\": \"3e-4\", \"kl_lr\": \"0.002\",
    \"eval_samples\": 1}}" > "$OUT/blob-kl0.002-seed0.console.log" 2>&1
fi
for run in blob-seed0 blob-kl0.002-seed0 blob-kl0-seed0; do
  nice -n 19 "$METALORA" eval "$OUT/$run" --split validation \
    --set eval_samples=10 --no-per-task > "$OUT/$run-validation.console.log" 2>&1
done
