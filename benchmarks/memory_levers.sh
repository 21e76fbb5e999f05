#!/usr/bin/env bash
# The memory-lever table of docs/benchmarks.md: the seed shape (1 question x 6 x 200, r64, KL, 24 GiB
# cap) once per lever, each lever one recipe setting changed from recipes/bench/qwen3b_seed_shape.yaml.
#   bash benchmarks/memory_levers.sh OUT_DIR [LEVER ...]      (after: source benchmarks/gpu_setup.sh)
# LEVER_SHAPE="key=value ..." is appended to every run (gpu_bench.sh's batched_levers part sets the batched shape).
# Prints one line per lever (peak allocated/reserved GiB, s/step, generation s) and writes OUT_DIR/lever_NAME.json
# (each run's output goes to $LEVER_LOGS/lever_NAME.log, default /tmp/lever_logs).
out=${1:?usage: memory_levers.sh OUT_DIR [LEVER ...]}; shift
R=recipes/bench/qwen3b_seed_shape.yaml
read -ra QWEN_ARGS <<<"${GRPO_R1_QWEN_ARGS:?source benchmarks/gpu_setup.sh first}"
logs=${LEVER_LOGS:-/tmp/lever_logs}; mkdir -p "$logs"
declare -A LEVERS=(
  [recipe]=""
  [no_checkpointing]="model.gradient_checkpointing=false"
  [live_lora_decoder]="generation.merged_weights=false"
  [importance_sampling]="generation.importance_sampling=true"
  [adamw_fused]="training.optim=adamw_torch_fused"
  [adamw_8bit]="training.optim=adamw_8bit"
  [liger_loss]="training.use_liger_kernel=true"
  [no_kl]="training.beta=0"
  [qlora_4bit]="model.load_in_4bit=true generation.engine=hf generation.merged_weights=false"
  [qlora_4bit_merged]="model.load_in_4bit=true"
  [unsloth_offloaded_gc]="model.backend=unsloth model.gradient_checkpointing=unsloth"
)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=(recipe no_checkpointing live_lora_decoder importance_sampling adamw_fused adamw_8bit liger_loss no_kl qlora_4bit qlora_4bit_merged unsloth_offloaded_gc)
for name in "${names[@]}"; do
  [ -n "${LEVERS[$name]+x}" ] || { echo "unknown lever $name"; exit 2; }
  # shellcheck disable=SC2086
  python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" ${LEVERS[$name]} $LEVER_SHAPE --gpu-mem 24 --steps ${LEVER_STEPS:-2} --warmup ${LEVER_WARMUP:-1} \
    --out "$out/lever_$name.json" > "$logs/lever_$name.log" 2>&1
  python - "$name" "$out/lever_$name.json" "${LEVERS[$name]}" "$logs/lever_$name.log" <<'PY'
import json, sys
name, path, change, log = sys.argv[1:]
try:
    r = json.load(open(path))
except OSError:
    last = [line for line in open(log, errors="replace").read().splitlines() if line.strip()][-1:] or ["no output"]
    print(f"{name:22s} not measured: {last[0][:300]}", flush=True); sys.exit()
print(f"{name:22s} peak {r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} GiB  {r['s_per_step']:.2f} s/step  "
      f"generation {r['phases_s']['generation']:.2f} s  fwd+bwd {r['phases_s']['forward_backward']:.2f} s  [{change or 'as the recipe'}]", flush=True)
PY
done
