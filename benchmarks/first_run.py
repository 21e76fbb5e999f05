"""Time README command 1 end to end, then evaluate the adapter it trained on the 100 held-out problems.

    python benchmarks/first_run.py [RECIPE] [--out RUN_DIR] [--no-eval] [--cold-start-eval] [section.key=value ...]

Runs `python -m grpo_r1.train RECIPE run.output_dir=RUN_DIR [overrides] --overwrite` (default
recipes/smollm2_gsm8k_cpu.yaml, runs/first_run) and takes the wall time from its start to the
line "grpo_r1: done: ..." (model load, cold start, GRPO, saving and plots included; the model's
conversion from the wheel's GGUF is cached under $GRPO_R1_CACHE after the very first use, so
say whether that cache was warm). Then it evaluates the adapter as docs/results.md does
(`python -m grpo_r1.evaluate RUN_DIR/recipe.yaml run.seed=0 --split test --limit 100 --adapter
RUN_DIR --no-base`: greedy, the same 100 test problems for every seed) and prints held-out
accuracy, the split of the run (cold start, GRPO steps and their timing/* means) and the load
average before and after (the machine is shared: compare variants within one sitting).
OMP_NUM_THREADS defaults to 2, WANDB_MODE to offline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DONE = "grpo_r1: done:"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], log: Path) -> tuple[float, float | None, int, float]:
    """(seconds to exit, seconds to the done line or None, exit status, CPU seconds of the command); output goes
    to `log` and stdout."""
    cpu_before = child_cpu_s()
    start = time.monotonic()
    done_at = None
    with open(log, "w") as out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
            if done_at is None and DONE in line:
                done_at = time.monotonic() - start
        status = proc.wait()
    return time.monotonic() - start, done_at, status, child_cpu_s() - cpu_before


def split_of(run_dir: Path) -> dict[str, float]:
    """Cold start seconds and the per-step timing/* means of the GRPO steps from the run's files."""
    out: dict[str, float] = {}
    cold = run_dir / "cold_start" / "metrics.jsonl"
    if cold.is_file():
        rows = [json.loads(line) for line in cold.read_text().splitlines() if line.strip()]
        if rows:
            out["cold_start_s"] = rows[-1]["elapsed_s"]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "timing/step_s" in r]
        out["grpo_steps"] = len(steps)
        for key in ("timing/step_s", "timing/generation_s", "timing/scoring_s", "timing/training_s"):
            values = [r[key] for r in steps if key in r]
            if values:
                out[key + "_mean"] = statistics.mean(values)
                out[key + "_sum"] = sum(values)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="RECIPE | section.key=value",
                        help="the recipe (default recipes/smollm2_gsm8k_cpu.yaml), then overrides")
    parser.add_argument("--out", default="runs/first_run", help="the run folder (replaced)")
    parser.add_argument("--no-eval", action="store_true", help="time the run only")
    parser.add_argument("--cold-start-eval", action="store_true",
                        help="also evaluate the adapter after the cold start (RUN_DIR/cold_start) the same way")
    args = parser.parse_intermixed_args()
    items = list(args.items)
    recipe = items.pop(0) if items and "=" not in items[0] else "recipes/smollm2_gsm8k_cpu.yaml"
    overrides = items
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_dir = Path(args.out)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    load_before = loadavg()
    train = [py, "-m", "grpo_r1.train", recipe, f"run.output_dir={run_dir}", *overrides, "--overwrite"]
    total, done_at, status, cpu = timed(train, run_dir.parent / f"{run_dir.name}.train.log")
    load_after_train = loadavg()
    figures: dict[str, object] = {
        "recipe": recipe, "overrides": overrides, "train_status": status,
        "train_to_done_s": round(done_at, 1) if done_at is not None else None, "train_to_exit_s": round(total, 1),
        "train_cpu_s": round(cpu, 1),
        "load_before": load_before, "load_after_train": load_after_train,
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
    }
    figures.update({k: round(v, 2) for k, v in split_of(run_dir).items()})
    stages = [("heldout", run_dir, "eval_heldout.json")]
    if args.cold_start_eval and (run_dir / "cold_start" / "adapter").is_dir():
        stages.append(("cold_start_heldout", run_dir / "cold_start", "eval_cold_start.json"))
    for name, adapter, file_name in stages if status == 0 and not args.no_eval else []:
        eval_out = run_dir / file_name
        evaluate = [py, "-m", "grpo_r1.evaluate", str(run_dir / "recipe.yaml"), "run.seed=0", "--split", "test",
                    "--limit", "100", "--adapter", str(adapter), "--no-base", "--out", str(eval_out)]
        eval_s, _, eval_status, eval_cpu = timed(evaluate, run_dir.parent / f"{run_dir.name}.{file_name}.log")
        figures[f"{name}_eval_s"] = round(eval_s, 1)
        figures[f"{name}_eval_cpu_s"] = round(eval_cpu, 1)
        figures[f"{name}_eval_status"] = eval_status
        figures[f"load_after_{name}_eval"] = loadavg()
        if eval_status == 0:
            report = json.loads(eval_out.read_text())["metrics"]["adapter"]
            for key in ("accuracy", "lenient_accuracy", "strict_format_rate", "mean_completion_tokens",
                        "truncation_rate"):
                figures[f"{name}_{key}"] = report.get(key)
    print("first run:", json.dumps(figures, indent=1))
    (run_dir.parent / f"{run_dir.name}.first_run.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if status == 0 else status


if __name__ == "__main__":
    sys.exit(main())
