#!/usr/bin/env bash
# Soak: a long run of a small recipe on the CPU, watched from outside. Every 10 steps it records the
# training process's resident memory, its open files, the step time (from metrics.jsonl) and the size of
# the run folder's metrics and W&B files; at the end it prints the table and how flat each figure stayed
# after the warm-up (the first WARMUP steps).
#
#   bash benchmarks/soak.sh                 # 300 steps into runs/soak (replaced)
#   STEPS=100 OUT=/tmp/soak bash benchmarks/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
OUT=${OUT:-runs/soak}
WARMUP=${WARMUP:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}

python -m grpo_r1.train recipes/smollm2_gsm8k_cpu.yaml "training.max_steps=$STEPS" training.save_steps=50 \
    cold_start.steps=0 generation.num_generations=2 training.per_device_train_batch_size=2 \
    generation.max_completion_length=32 logging.completions_every=10 "run.output_dir=$OUT" --overwrite \
    > "$OUT.log" 2>&1 &
pid=$!
echo "soak: training pid $pid, $STEPS steps into $OUT (log $OUT.log)"
echo "step,elapsed_s,rss_mib,open_files,threads,metrics_kib,wandb_kib" > "$OUT.csv"
start=$(date +%s)
next=10
while kill -0 "$pid" 2>/dev/null; do
    steps=$( (wc -l < "$OUT/metrics.jsonl") 2>/dev/null || echo 0)
    if (( steps >= next )); then
        rss=$(awk '/VmRSS/{print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || echo "")
        threads=$(awk '/Threads/{print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        metrics=$(du -sk "$OUT/metrics.jsonl" | cut -f1)
        wandb=$( (du -sk "$OUT/wandb" | cut -f1) 2>/dev/null || echo 0)
        echo "$steps,$(( $(date +%s) - start )),$rss,$fds,$threads,$metrics,$wandb" >> "$OUT.csv"
        next=$(( (steps / 10 + 1) * 10 ))
    fi
    sleep 1
done
wait "$pid" && status=0 || status=$?
echo "soak: training exited with status $status after $(( $(date +%s) - start )) s"
python - "$OUT" "$WARMUP" <<'PY'
import csv, statistics, sys
out, warmup = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(out + ".csv")))
print("step  elapsed_s  rss_MiB  open_files  threads  metrics_KiB  wandb_KiB")
for r in rows:
    print(f"{r['step']:>4}  {r['elapsed_s']:>9}  {r['rss_mib']:>7}  {r['open_files']:>10}  {r['threads']:>7}  "
          f"{r['metrics_kib']:>11}  {r['wandb_kib']:>9}")
after = [r for r in rows if int(r["step"]) > warmup]
for key in ("rss_mib", "open_files", "threads"):
    values = [float(r[key]) for r in after if r[key]]
    if values:
        mid = statistics.median(values)
        print(f"{key} after step {warmup}: median {mid:g}, min {min(values):g} ({min(values) / mid - 1:+.1%}), "
              f"max {max(values):g} ({max(values) / mid - 1:+.1%})")
gaps = [(int(b["step"]) - int(a["step"]), float(b["elapsed_s"]) - float(a["elapsed_s"])) for a, b in zip(after, after[1:])]
per_step = [seconds / count for count, seconds in gaps if count]
if per_step:
    mid = statistics.median(per_step)
    print(f"s/step after step {warmup} (per 10-step window): median {mid:.2f}, min {min(per_step):.2f}, "
          f"max {max(per_step):.2f}")
PY
