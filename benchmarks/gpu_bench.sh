#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, part by part:  bash benchmarks/gpu_bench.sh PART [PART ...]
#   seed       the seed shape (1 question x 6 x 200, r64, KL) against plain TRL, in one invocation
#   unsloth    the seed shape against Unsloth without vLLM
#   batched    the batched shape (8 questions x 6 x 200)
#   micro      the static decoder's time per token and its logprob gap (benchmarks/gen_microbench.py)
#   levers     the memory levers, one bench run each (benchmarks/memory_levers.sh)
#   batched_levers  the same levers at the batched shape (into $OUT/batched/)
#   preflight  the preflight's out-of-memory message at the worst case of a 4096-token recipe
# Each part writes PART.json / PART.log into $OUT (default /tmp/out) and is cut off after its
# share of the 10-minute device call (TIMEOUT_PART or PART_TIMEOUT seconds, default 300).
# LEVERS="a b" picks the memory levers to run (default: all of benchmarks/memory_levers.sh).
source benchmarks/gpu_setup.sh
set +e
out=${OUT:-/tmp/out}
mkdir -p "$out"
R=recipes/bench/qwen3b_seed_shape.yaml
BATCHED=(training.per_device_train_batch_size=12 training.gradient_accumulation_steps=4)
show() { grep -v "Warning\|warn\|^{\|^ *\"" | tail -${1:-25}; }
for part in "$@"; do
  var=TIMEOUT_$part; limit=${!var:-${PART_TIMEOUT:-300}}
  echo "== $part ($(date +%T))"
  case $part in
    seed) timeout $limit python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" --gpu-mem 24 --steps 3 --warmup 2 --compare trl \
            --out "$out/seed.json" 2>&1 | tee "$out/seed.log" | show ;;
    unsloth) timeout $limit python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" --gpu-mem 24 --steps 2 --warmup 2 --compare unsloth \
            --out "$out/unsloth.json" 2>&1 | tee "$out/unsloth.log" | show ;;
    batched) timeout $limit python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" "${BATCHED[@]}" --gpu-mem 24 --steps 2 --warmup 2 \
            --out "$out/batched.json" 2>&1 | tee "$out/batched.log" | show ;;
    micro) timeout $limit python benchmarks/gen_microbench.py $R "${QWEN_ARGS[@]}" 2>&1 | tee "$out/micro.log" | show 12 ;;
    levers) timeout $limit bash benchmarks/memory_levers.sh "$out" $LEVERS 2>&1 | tee "$out/levers.log" | show 40 ;;
    batched_levers) mkdir -p "$out/batched"
            LEVER_SHAPE="${BATCHED[*]}" LEVER_LOGS=/tmp/lever_logs/batched timeout $limit bash benchmarks/memory_levers.sh \
            "$out/batched" $LEVERS 2>&1 | tee "$out/batched_levers.log" | show 40 ;;
    preflight) timeout $limit python - "${QWEN_ARGS[@]}" <<'PY' 2>&1 | tee "$out/preflight.log" | grep -E "^error|preflight|exit"
import sys, torch
torch.cuda.set_per_process_memory_fraction(24 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
from grpo_r1.train import main
code = main(["recipes/bench/qwen3b_seed_shape.yaml", *sys.argv[1:], "model.train_random_init=true",
             "generation.max_completion_length=4096", "model.max_seq_length=4608", "model.gradient_checkpointing=false",
             "run.output_dir=/tmp/oom_run", "training.max_steps=2"])
print("exit", code)
PY
    ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
echo "== done ($(date +%T))"
