"""Time `python -m grpo_r1.evaluate`'s sampling per engine on the same questions, and print a table.

    python benchmarks/bench_evaluate.py RECIPE [section.key=value ...] [--engines hf,hf-compiled,vllm]
                                        [--questions 100] [--split test] [--adapter RUN] [--batch-size B]
                                        [--timeout S] [--out-dir DIR]

Each engine runs the evaluate command itself in a process of its own (`--engine E --limit N`, the
base model alone unless --adapter), so none inherits another's memory or compiled graphs. From
its eval.json come: the sampling seconds (first question to last, a compiled engine's compile
included), the first batch or round alone, questions/s and completion tokens/s over the whole
sampling, accuracy and lenient accuracy, and how many greedy answers equal the first engine's.
The process's whole wall time (model loading included) and the 1-minute load average
(/proc/loadavg) before and after each engine are shown too: on a shared CPU they move the
figures. With random weights (model.init: random) no completion ever stops: every one runs to
generation.max_completion_length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def load_average() -> str:
    """The 1-minute load average, or '?' where /proc/loadavg is missing."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def run_engine(args: argparse.Namespace, engine: str, out: Path) -> dict:
    """One evaluate run with `engine`: its eval.json plus wall seconds and load averages (or an error)."""
    cmd = [sys.executable, "-m", "grpo_r1.evaluate", args.recipe, *args.overrides, "--engine", engine,
           "--limit", str(args.questions), "--split", args.split, "--out", str(out)]
    if args.adapter:
        cmd += ["--adapter", args.adapter]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    before, started = load_average(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        error = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
        stderr = proc.stderr
    except subprocess.TimeoutExpired as e:
        error, stderr = f"stopped after {args.timeout} s", e.stderr or ""
    stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    result = {"engine": engine, "wall_s": round(time.perf_counter() - started, 1), "load_before": before,
              "load_after": load_average(), "error": error, "stderr_tail": stderr[-3000:]}
    if error is None:
        result["report"] = json.loads(out.read_text())
    return result


def row(result: dict, first: dict | None) -> list[str]:
    """The table row of one engine's result."""
    load = f"{result['load_before']} / {result['load_after']}"
    if result["error"]:
        return [result["engine"], "-", "-", "-", "-", "-", "-", "-", str(result["wall_s"]), load, result["error"]]
    report = result["report"]
    name = next(iter(report["metrics"]))  # "base" without an adapter, else "base" then "adapter"
    names = list(report["metrics"])
    seconds = sum(report["seconds"][n] for n in names)
    tokens = sum(r["num_tokens"] for n in names for r in report["records"][n])
    questions = report["settings"]["questions"] * len(names)
    metrics = report["metrics"][name]
    same = "-"
    if first is not None and "report" in first:
        ours = [r["completion"] for n in names for r in report["records"][n]]
        theirs = [r["completion"] for n in names for r in first["report"]["records"][n]]
        same = f"{sum(a == b for a, b in zip(ours, theirs, strict=True))}/{len(ours)}"
    return [result["engine"], str(questions), f"{seconds:.1f}", f"{report['round_seconds'][name][0]:.1f}",
            f"{questions / seconds:.2f}", f"{tokens / seconds:.0f}", f"{metrics['accuracy']:.3f}",
            f"{metrics['lenient_accuracy']:.3f}", f"{result['wall_s']:.0f}", load, same]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings passed to evaluate")
    parser.add_argument("--engines", default="hf,hf-compiled,vllm",
                        help="comma-separated (default hf,hf-compiled,vllm)")
    parser.add_argument("--questions", type=int, default=100, help="questions evaluated (default 100)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--adapter", help="a run folder: base and adapter are both sampled")
    parser.add_argument("--batch-size", type=int, help="evaluate's --batch-size (default its own per engine)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one engine may take (default 3600)")
    parser.add_argument("--out-dir", default="bench_evaluate", help="where each eval.json and summary.json go")
    args = parser.parse_intermixed_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = []
    for engine in args.engines.split(","):
        print(f"{engine}: evaluating {args.questions} questions (load average {load_average()})", flush=True)
        result = run_engine(args, engine, out_dir / f"eval-{engine}-{args.questions}.json")
        results.append(result)
        print(f"{engine}: {'done' if result['error'] is None else result['error']} in {result['wall_s']} s",
              flush=True)
    rows = [row(r, None if r is results[0] else results[0]) for r in results]
    summary = [{k: v for k, v in r.items() if k != "report"} | {"row": line}
               for r, line in zip(results, rows, strict=True)]
    (out_dir / f"summary-{args.questions}.json").write_text(json.dumps(summary, indent=2) + "\n")
    header = ["engine", "completions", "sampling s", "first round s", "completions/s", "tokens/s", "accuracy",
              "lenient", "process s", "load before / after", "same greedy answers as first"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for line in rows:
        print("| " + " | ".join(line) + " |")
    return 0 if all(r["error"] is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
