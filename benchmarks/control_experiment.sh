#!/usr/bin/env bash
# GRPO against supervised controls of equal compute, on the harder multi-step task
# (recipes/smollm2_multistep_cpu.yaml; docs/results.md, "GRPO against a control"). Per seed, each arm
# in its own folder under OUT_DIR/seedS, skipped once done, so the script can stop and start again
# across sessions (a GRPO arm cut short resumes from its last checkpoint):
#   grpo     the recipe: cold start, then GRPO
#   dynamic  the same with generation.resample_equal_groups=2 (equal-reward groups replaced)
#   sft      python -m grpo_r1.control grpo --arm sft (GRPO's questions and steps, reference solutions)
#   longer   python -m grpo_r1.control grpo --arm longer-cold-start (the cold start, longer by GRPO's steps)
# then every adapter, the cold start's too, evaluated greedy and with maj@4 on the same 200 held-out
# problems (eval_<arm>.json). Wall seconds of each attempt at an arm are appended to <arm>.seconds.
#   bash benchmarks/control_experiment.sh [OUT_DIR] [SEEDS...]
#   python benchmarks/control_report.py OUT_DIR
set -euo pipefail
out=${1:-runs/control}; shift || true
seeds=${*:-1 2 3}
recipe=recipes/smollm2_multistep_cpu.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
# The held-out set: the test split's problems for run.seed=0, the same for every seed and arm.
eval_args=(run.seed=0 --split test --limit 200 --samples 4)

timed() {  # timed FILE command...: run the command, then append its wall seconds to FILE
  local file=$1 start
  shift
  start=$(date +%s)
  "$@"
  echo $(( $(date +%s) - start )) >> "$file"
}

train_arm() {  # train_arm RUN_DIR SECONDS_FILE overrides...: a GRPO run, resumed if it has a checkpoint
  local dir=$1 seconds=$2
  shift 2
  [ -f "$dir/adapter/adapter_config.json" ] && return
  if compgen -G "$dir/checkpoints/checkpoint-*/complete.json" > /dev/null; then
    timed "$seconds" python -m grpo_r1.train "$recipe" "$@" run.output_dir="$dir" --resume "$dir"
  else
    timed "$seconds" python -m grpo_r1.train "$recipe" "$@" run.output_dir="$dir" --overwrite
  fi
}

evaluate_arm() {  # evaluate_arm ADAPTER OUT_JSON
  [ -f "$2" ] || timed "${2%.json}.seconds" python -m grpo_r1.evaluate "$recipe" "${eval_args[@]}" \
      --adapter "$1" --no-base --out "$2"
}

mkdir -p "$out"
[ -f "$out/base.json" ] || python -m grpo_r1.evaluate "$recipe" "${eval_args[@]}" --out "$out/base.json"
for seed in $seeds; do
  run="$out/seed$seed"
  mkdir -p "$run"
  train_arm "$run/grpo" "$run/grpo.seconds" run.seed="$seed"
  for arm in sft longer-cold-start; do
    name=${arm%-cold-start}
    [ -f "$run/$name/adapter/adapter_config.json" ] || timed "$run/$name.seconds" \
        python -m grpo_r1.control "$run/grpo" --arm "$arm" --out "$run/$name" --overwrite
  done
  train_arm "$run/dynamic" "$run/dynamic.seconds" run.seed="$seed" generation.resample_equal_groups=2
  evaluate_arm "$run/grpo/cold_start" "$run/eval_cold_start.json"
  for name in grpo sft longer dynamic; do
    evaluate_arm "$run/$name" "$run/eval_$name.json"
  done
done
