#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, part by part:  bash benchmarks/gpu_bench.sh PART [PART ...]
#   seed       the seed shape (1 question x 6 x 200, r64, KL) against plain TRL, in one invocation
#              (COMPARE= leaves TRL out; COMPARE=trl,unsloth adds Unsloth)
#   unsloth    the seed shape against Unsloth without vLLM
#   batched    the batched shape (8 questions x 6 x 200)
#   batched_zero        the same with only the seed's five rewards: on random weights every group scores
#                       alike, so advantages and gradients are zero (how docs/benchmarks.md measured before
#                       2026-12-02)
#   batched_fused       the batched shape with fused fp32 AdamW instead of paged 8-bit
#   batched_expandable  the batched shape with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
#   gpu_tests  the tests marked gpu in GPU_TESTS (default tests/unit/test_packing.py: the rest of tests/ needs
#              packages the GPU machine lacks), e.g. FlexAttention's shared-prompt backward against the padded one;
#              each test's outcome is printed; GPU_TEST_ARGS adds pytest arguments (-k "bf16 and qwen2.5-3b")
#   micro      the static decoder's time per token, memory and logprob gap (benchmarks/gen_microbench.py;
#              MICRO_ARGS adds its options, e.g. --batches 6 --variants live,merged)
#   fourbit    one decode token's 4-bit products by shape and by the way bitsandbytes computes them
#              (benchmarks/fourbit_products.py; FOURBIT_ARGS adds its options, e.g. --rows 48)
#   decode_profile  the static decoder's kernels per token, by kind and the longest (benchmarks/decode_profile.py;
#              PROFILE_ARGS adds overrides and options, e.g. --variant merged, or model.load_in_4bit=true)
#   levers     the memory levers, one bench run each (benchmarks/memory_levers.sh)
#   batched_levers  the same levers at the batched shape (into $OUT/batched/)
#   preflight  the preflight's out-of-memory message at the worst case of a 4096-token recipe
#   seed_before, batched_before, seed_live_before, q7b_live_before, q7b_unsloth_backend_before  those parts run by
#              an older copy of the code in .carry/before (git archive COMMIT grpo_r1 rewards recipes | tar -x -C
#              .carry/before), for a before/after pair in one invocation
#   batched_mb24, batched_mb48  the batched shape in 2 micro-batches of 24, or 1 of 48 (instead of 4 of 12)
#   batched_mb24_expandable, batched_mb48_expandable  2 of 24 or 1 of 48 with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
#   batched_liger_mb24  the batched shape as the planner picked it: Liger's loss, 2 micro-batches of 24
#   phase_memory  the peak memory of each phase of real steps beside the preflight's (benchmarks/phase_memory.py),
#                 at the batched shape in 2 micro-batches of 24 (PHASE_ARGS replaces that)
#   seed_live  the seed shape with the static decoder reading the LoRA live (generation.merged_weights=false):
#              no merged copy of the weights
#   q3b_live, q3b_merged  the seed shape with a 4-bit (QLoRA) base, decoded through bitsandbytes' 4-bit matmul
#              (live) or from a dequantized merged copy
#   q7b_live, q7b_bf16  Qwen2.5-7B at the seed shape: QLoRA decoded through the 4-bit matmul, and a bf16 LoRA
#              read live (for the 4-bit decoder's speed against bf16)
#   q7b_unsloth_backend, seed_unsloth_backend, batched_unsloth_backend  q7b_live, seed and batched with
#              model.backend=unsloth (Unsloth's patched model and LoRA kernels, its offloaded checkpointing)
#              and the hf-compiled engine
#   seed_unsloth_live  seed_unsloth_backend with the decoder reading the LoRA live (no merged copy)
#   seed_packed, seed_shared, batched_packed, batched_shared  the seed and batched shapes with the scoring
#              forwards packed (model.padding_free=true) or packed with each question's prompt once (shared_prompt)
#   q7b_unsloth  Qwen2.5-7B QLoRA at the seed shape (as q7b_live) against Unsloth without vLLM, in one invocation
#   plan_batched  python -m grpo_r1.plan at the batched shape, levers micro_batch and liger (PLAN_LEVERS)
#   plan_7b       python -m grpo_r1.plan for Qwen2.5-7B in 4 bits (QLoRA) at the seed shape, levers merged_weights
#                 and load_in_4bit (PLAN_LEVERS)
#   plan_qwen3b   python -m grpo_r1.plan for recipes/qwen3b_gsm8k.yaml with model.backend=transformers
#                 generation.engine=hf-compiled, at random init (default levers, or PLAN_LEVERS)
# Each part writes PART.json / PART.log into $OUT (default /tmp/out) and is cut off after its
# share of the 10-minute device call (TIMEOUT_PART or PART_TIMEOUT seconds, default 300).
# LEVERS="a b" picks the memory levers to run (default: all of benchmarks/memory_levers.sh).
# STEPS and WARMUP set the bench parts' measured and warm-up steps (default 5 and 2: medians of 5).
# The bench recipe's rewards include rewards.benchmark:text_hash, so advantages and gradients are not zero.
source benchmarks/gpu_setup.sh
set +e
out=${OUT:-/tmp/out}
mkdir -p "$out"
R=recipes/bench/qwen3b_seed_shape.yaml
BATCHED=(training.per_device_train_batch_size=12 training.gradient_accumulation_steps=4)
show() { grep -v "Warning\|warn(\|warnings.warn\|^{\|^ *\"" | tail -${1:-40}; }
STEPS=${STEPS:-5}; WARMUP=${WARMUP:-2}; cmp=${COMPARE-trl}
SEED_REWARDS='rewards=[xml_count, soft_format, strict_format, int_answer, gsm8k_correctness]'
# bench PART [overrides and options ...]: one bench run of the recipe into PART.json / PART.log
# (from CODE_DIR, default the checkout: .carry/before for the *_before parts)
bench() { local name=$1; shift
  (cd "${CODE_DIR:-.}" && PYTHONPATH=/tmp/site:$PWD timeout $limit python -m grpo_r1.bench $R "${QWEN_ARGS[@]}" "$@" \
    --gpu-mem 24 --steps $STEPS --warmup $WARMUP --out "$out/$name.json") 2>&1 | tee "$out/$name.log" | show; }
# plan PART RECIPE [overrides and options ...]: python -m grpo_r1.plan into PART.json / PART.log
plan() { local name=$1 recipe=$2; shift 2
  PYTHONPATH=/tmp/site:$PWD timeout $limit python -m grpo_r1.plan "$recipe" "${QWEN_ARGS[@]}" "$@" --mem 24 \
    --steps ${PLAN_STEPS:-2} --warmup ${PLAN_WARMUP:-1} --out "$out/$name.json" 2>&1 | tee "$out/$name.log" | show 30; }
for part in "$@"; do
  var=TIMEOUT_$part; limit=${!var:-${PART_TIMEOUT:-300}}
  echo "== $part ($(date +%T))"
  case $part in
    seed) bench seed ${cmp:+--compare $cmp} ;;
    unsloth) bench unsloth --compare unsloth ;;
    batched) bench batched "${BATCHED[@]}" ;;
    seed_packed) bench seed_packed model.padding_free=true ;;
    seed_shared) bench seed_shared model.padding_free=shared_prompt ;;
    batched_packed) bench batched_packed "${BATCHED[@]}" model.padding_free=true ;;
    batched_shared) bench batched_shared "${BATCHED[@]}" model.padding_free=shared_prompt ;;
    seed_live) bench seed_live generation.merged_weights=false ;;
    q3b_live) bench q3b_live model.load_in_4bit=true generation.merged_weights=false ;;
    q3b_merged) bench q3b_merged model.load_in_4bit=true generation.merged_weights=true ;;
    q7b_live) bench q7b_live model.architecture=qwen2.5-7b model.load_in_4bit=true generation.merged_weights=false ;;
    q7b_unsloth) bench q7b_unsloth model.architecture=qwen2.5-7b model.load_in_4bit=true generation.merged_weights=false \
        --compare unsloth ;;
    q7b_unsloth_backend) bench q7b_unsloth_backend model.architecture=qwen2.5-7b model.load_in_4bit=true \
        generation.merged_weights=false model.backend=unsloth model.gradient_checkpointing=unsloth ;;
    seed_unsloth_backend) bench seed_unsloth_backend model.backend=unsloth model.gradient_checkpointing=unsloth ;;
    seed_unsloth_live) bench seed_unsloth_live model.backend=unsloth model.gradient_checkpointing=unsloth \
        generation.merged_weights=false ;;
    batched_unsloth_backend) bench batched_unsloth_backend "${BATCHED[@]}" model.backend=unsloth \
        model.gradient_checkpointing=unsloth ;;
    q7b_bf16) bench q7b_bf16 model.architecture=qwen2.5-7b generation.merged_weights=false ;;
    seed_before) CODE_DIR=.carry/before bench seed_before ;;
    batched_before) CODE_DIR=.carry/before bench batched_before "${BATCHED[@]}" ;;
    seed_live_before) CODE_DIR=.carry/before bench seed_live_before generation.merged_weights=false ;;
    q7b_live_before) CODE_DIR=.carry/before bench q7b_live_before model.architecture=qwen2.5-7b model.load_in_4bit=true \
        generation.merged_weights=false ;;
    q7b_unsloth_backend_before) CODE_DIR=.carry/before bench q7b_unsloth_backend_before model.architecture=qwen2.5-7b \
        model.load_in_4bit=true generation.merged_weights=false model.backend=unsloth model.gradient_checkpointing=unsloth ;;
    batched_mb24) bench batched_mb24 training.per_device_train_batch_size=24 training.gradient_accumulation_steps=2 ;;
    batched_mb24_expandable) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True bench batched_mb24_expandable \
        training.per_device_train_batch_size=24 training.gradient_accumulation_steps=2 ;;
    batched_mb48_expandable) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True bench batched_mb48_expandable \
        training.per_device_train_batch_size=48 training.gradient_accumulation_steps=1 ;;
    batched_liger_mb24) bench batched_liger_mb24 training.use_liger_kernel=true training.per_device_train_batch_size=24 \
        training.gradient_accumulation_steps=2 ;;
    batched_mb48) bench batched_mb48 training.per_device_train_batch_size=48 training.gradient_accumulation_steps=1 ;;
    phase_memory) timeout $limit python benchmarks/phase_memory.py $R "${QWEN_ARGS[@]}" \
        ${PHASE_ARGS:-training.per_device_train_batch_size=24 training.gradient_accumulation_steps=2} --steps 2 2>&1 \
        | tee "$out/phase_memory.log" | grep -E "^\||^preflight|^highest|rror" ;;
    plan_batched) plan plan_batched $R "${BATCHED[@]}" --levers ${PLAN_LEVERS:-micro_batch,liger} ;;
    plan_7b) plan plan_7b $R model.architecture=qwen2.5-7b model.load_in_4bit=true generation.merged_weights=false \
        --levers ${PLAN_LEVERS:-merged_weights,load_in_4bit} ;;
    plan_qwen3b) plan plan_qwen3b recipes/qwen3b_gsm8k.yaml model.init=random model.architecture=qwen2.5-3b \
        model.backend=transformers model.gradient_checkpointing=true generation.engine=hf-compiled \
        logging.report_to=none 'rewards=[xml_count, soft_format, strict_format, int_answer, gsm8k_correctness, "rewards.benchmark:text_hash"]' \
        ${PLAN_LEVERS:+--levers $PLAN_LEVERS} ;;
    batched_zero) bench batched_zero "${BATCHED[@]}" "$SEED_REWARDS" ;;
    batched_fused) bench batched_fused "${BATCHED[@]}" training.optim=adamw_torch_fused ;;
    batched_expandable) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True bench batched_expandable "${BATCHED[@]}" ;;
    gpu_tests) timeout $limit python -m pytest -v --tb=line -p no:cacheprovider -p no:logging -m gpu \
        ${GPU_TESTS:-tests/unit/test_packing.py} ${GPU_TEST_ARGS:-} 2>&1 | tee "$out/gpu_tests.log" \
        | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|^E |^/" | tail -40 ;;
    fourbit) timeout $limit python benchmarks/fourbit_products.py ${FOURBIT_ARGS:-} 2>&1 | tee "$out/fourbit.log" | show 12 ;;
    decode_profile) timeout $limit python benchmarks/decode_profile.py $R "${QWEN_ARGS[@]}" ${PROFILE_ARGS:-} 2>&1 \
        | tee "$out/decode_profile.log" | show 40 ;;
    micro) timeout $limit python benchmarks/gen_microbench.py $R "${QWEN_ARGS[@]}" ${MICRO_ARGS:-} 2>&1 | tee "$out/micro.log" | show 12 ;;
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
