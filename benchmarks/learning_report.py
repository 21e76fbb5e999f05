"""Summarise benchmarks/learning_experiment.sh: the table of docs/results.md and its curve PNGs.

    python benchmarks/learning_report.py [OUT_DIR] [--copy-plots docs/results]

Reads OUT_DIR/base.json and OUT_DIR/seed*/eval_{cold_start,final}.json (grpo_r1.evaluate's
eval.json), prints one row per seed and stage, the mean and spread over seeds, and the change
GRPO made on top of the cold start; with --copy-plots, copies each seed's plots/*.png there.
"""

import argparse
import json
import shutil
import statistics
from pathlib import Path

METRICS = ("accuracy", "lenient_accuracy", "strict_format_rate", "mean_completion_tokens", "truncation_rate")


def metrics(path: Path) -> dict[str, float]:
    report = json.loads(path.read_text())["metrics"]
    return report.get("adapter") or report["base"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="runs/learning")
    parser.add_argument("--copy-plots")
    args = parser.parse_args()
    out = Path(args.out)
    seeds = sorted(p for p in out.glob("seed*") if (p / "eval_final.json").is_file())
    base = metrics(out / "base.json")
    print("| stage | seed | " + " | ".join(METRICS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in METRICS) + " |")
    print("| base model | - | " + " | ".join(f"{base[m]:.3g}" for m in METRICS) + " |")
    stages = {"cold start": "eval_cold_start.json", "cold start + GRPO": "eval_final.json"}
    table = {stage: [metrics(seed / name) for seed in seeds] for stage, name in stages.items()}
    for stage, rows in table.items():
        for seed, row in zip(seeds, rows):
            print(f"| {stage} | {seed.name.removeprefix('seed')} | "
                  + " | ".join(f"{row[m]:.3g}" for m in METRICS) + " |")
    print()
    for stage, rows in table.items():
        for m in ("accuracy", "strict_format_rate"):
            values = [r[m] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{stage}: {m} mean {statistics.mean(values):.3f}, std over seeds {spread:.3f}, "
                  f"range {min(values):.2f}-{max(values):.2f}")
    gains = [f["accuracy"] - c["accuracy"] for c, f in zip(table["cold start"], table["cold start + GRPO"])]
    print(f"GRPO's gain in accuracy over its own cold start, per seed: {[round(g, 3) for g in gains]}; "
          f"mean {statistics.mean(gains):.3f}, std {statistics.stdev(gains) if len(gains) > 1 else 0.0:.3f}")
    for seed in seeds:
        steps = [json.loads(line) for line in (seed / "metrics.jsonl").read_text().splitlines() if line.strip()]
        first, last = steps[:5], steps[-5:]
        reward = lambda rows: statistics.mean(r.get("reward", 0.0) for r in rows)  # noqa: E731
        print(f"{seed.name}: mean reward steps 1-5 {reward(first):.3f}, last 5 steps {reward(last):.3f}; "
              f"kl at the end {last[-1].get('kl', float('nan')):.4f}; "
              f"s/step {statistics.mean(r.get('timing/step_s', 0.0) for r in steps):.1f}")
        if args.copy_plots:
            target = Path(args.copy_plots)
            target.mkdir(parents=True, exist_ok=True)
            for png in sorted((seed / "plots").glob("*.png")):
                shutil.copy(png, target / f"{seed.name}_{png.name}")


if __name__ == "__main__":
    main()
