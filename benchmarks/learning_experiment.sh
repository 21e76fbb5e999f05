#!/usr/bin/env bash
# The learning experiment of docs/results.md: SmolLM2-135M-Instruct on the built-in arithmetic
# word problems, three seeds, each: a cold start (supervised, R1 format) then GRPO; every stage
# evaluated on the same 100 held-out test problems (greedy).
#   bash benchmarks/learning_experiment.sh [OUT_DIR] [SEEDS...]
# The settings of 2026-11-23's runs, written out (the default recipe has since changed: docs/results.md,
# "The default since 2026-12-02"). 15-25 min per seed on 2 CPU cores (12.4 s a GRPO step idle).
set -euo pipefail
out=${1:-runs/learning}; shift || true
seeds=${*:-1 2 3}
recipe=recipes/smollm2_gsm8k_cpu.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
# The held-out set: the test split's problems for run.seed=0, the same for every seed below.
eval_args=(run.seed=0 --split test --limit 100)
mkdir -p "$out"
[ -f "$out/base.json" ] || python -m grpo_r1.evaluate "$recipe" "${eval_args[@]}" --out "$out/base.json"
for seed in $seeds; do
  run="$out/seed$seed"
  [ -f "$run/adapter/adapter_config.json" ] || python -m grpo_r1.train "$recipe" run.seed="$seed" \
      run.output_dir="$run" cold_start.steps=40 cold_start.batch_size=8 cold_start.learning_rate=1e-4 \
      generation.engine=hf training.max_steps=30 training.per_device_train_batch_size=8 \
      training.learning_rate=5e-5 logging.completions_every=10 --overwrite
  python -m grpo_r1.evaluate "$recipe" "${eval_args[@]}" --adapter "$run/cold_start" --no-base --out "$run/eval_cold_start.json"
  python -m grpo_r1.evaluate "$recipe" "${eval_args[@]}" --adapter "$run" --no-base --out "$run/eval_final.json"
done
