#!/usr/bin/env bash
# Device call: the preflight's out-of-memory message at a 24 GiB cap, then the seed shape
# against plain TRL in one invocation (docs/benchmarks.md).
source benchmarks/gpu_setup.sh
set +e
out=${OUT:-/tmp/out}
R=recipes/bench/qwen3b_seed_shape.yaml
python - "${QWEN_ARGS[@]}" <<'PY' 2>&1 | tee "$out/preflight.log" | grep -E "^error|preflight|exit" 
import sys, torch
torch.cuda.set_per_process_memory_fraction(24 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
from grpo_r1.train import main
code = main(["recipes/bench/qwen3b_seed_shape.yaml", *sys.argv[1:], "model.train_random_init=true",
             "generation.max_completion_length=4096", "model.max_seq_length=4608", "model.gradient_checkpointing=false",
             "run.output_dir=/tmp/oom_run", "training.max_steps=2"])
print("exit", code)
PY
python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" --gpu-mem 24 --steps 2 --warmup 2 --compare trl --out "$out/seed_vs_trl.json" 2>&1 \
  | tee "$out/seed_vs_trl.log" | grep -v "Warning\|warn\|^{" | tail -25
