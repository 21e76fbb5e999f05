"""Summarise benchmarks/control_experiment.sh: the tables of docs/results.md, "GRPO against a control".

    python benchmarks/control_report.py [OUT_DIR] [--copy-plots docs/results/control]

Reads OUT_DIR/base.json and OUT_DIR/seed*/eval_<arm>.json (grpo_r1.evaluate's eval.json), the
arms' wall seconds (<arm>.seconds, one line per attempt) and the GRPO runs' metrics.jsonl. Prints
one row per seed and arm; per arm the mean and spread over the seeds that finished it; GRPO's
gain over each control, per seed, with its mean and spread; the groups that carried no signal.
With --copy-plots, copies each GRPO run's reward and training curves there.
"""

import argparse
import json
import shutil
import statistics
from pathlib import Path

ARMS = {"cold_start": "cold start", "longer": "cold start, longer (control)", "sft": "cold start + SFT (control)",
        "grpo": "cold start + GRPO", "dynamic": "cold start + GRPO, dynamic sampling"}
METRICS = ("accuracy", "lenient_accuracy", "maj@K", "strict_format_rate", "truncation_rate", "mean_completion_tokens")


def metrics(path: Path) -> dict[str, float]:
    """An eval.json's figures, its maj@<samples> as maj@K."""
    report = json.loads(path.read_text())
    figures = dict(report["metrics"].get("adapter") or report["metrics"]["base"])
    figures["maj@K"] = figures.get(f"maj@{report['settings']['samples']}", float("nan"))
    return figures


def seconds(path: Path) -> float | None:
    return sum(float(line) for line in path.read_text().split()) if path.is_file() else None


def training_seconds(seed: Path, arm: str) -> float | None:
    """Wall seconds of the arm's training; the cold start's from its own log (it runs inside the GRPO arm)."""
    if arm == "cold_start":
        rows = [json.loads(line) for line in (seed / "grpo" / "cold_start" / "metrics.jsonl").read_text().splitlines()]
        return rows[-1]["elapsed_s"] if rows else None
    return seconds(seed / f"{arm}.seconds")


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} (std {std:.3f}, n={len(values)})"


def steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="runs/control")
    parser.add_argument("--copy-plots")
    args = parser.parse_args()
    out = Path(args.out)
    seeds = sorted(p for p in out.glob("seed*") if p.is_dir())
    print("| arm | seed | " + " | ".join(METRICS) + " | training s | evaluation s |")
    print("| --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- | --- |")
    if (out / "base.json").is_file():
        base = metrics(out / "base.json")
        print("| base model | - | " + " | ".join(f"{base.get(m, float('nan')):.3g}" for m in METRICS) + " | - | - |")
    results: dict[str, dict[str, dict[str, float]]] = {arm: {} for arm in ARMS}
    for arm, label in ARMS.items():
        for seed in seeds:
            path = seed / f"eval_{arm}.json"
            if not path.is_file():
                continue
            row = results[arm][seed.name] = metrics(path)
            walls = [training_seconds(seed, arm), seconds(seed / f"eval_{arm}.seconds")]
            wall_text = " | ".join(f"{w:.0f}" if w is not None else "-" for w in walls)
            print(f"| {label} | {seed.name.removeprefix('seed')} | "
                  + " | ".join(f"{row.get(m, float('nan')):.3g}" for m in METRICS) + f" | {wall_text} |")
    print()
    for arm, label in ARMS.items():
        rows = list(results[arm].values())
        if rows:
            print(f"{label}: accuracy {spread([r['accuracy'] for r in rows])}, "
                  f"maj@K {spread([r['maj@K'] for r in rows])}")
    for other in ("cold_start", "longer", "sft"):
        for figure in ("accuracy", "maj@K"):
            gains = {s: results["grpo"][s][figure] - results[other][s][figure]
                     for s in results["grpo"] if s in results[other]}
            print(f"GRPO - {ARMS[other]}, {figure}: per seed {({s: round(g, 3) for s, g in gains.items()})}; "
                  f"mean {spread(list(gains.values()))}")
    gains = {s: results["dynamic"][s]["accuracy"] - results["grpo"][s]["accuracy"]
             for s in results["dynamic"] if s in results["grpo"]}
    print(f"dynamic sampling - GRPO, accuracy: per seed {({s: round(g, 3) for s, g in gains.items()})}; "
          f"mean {spread(list(gains.values()))}")
    print()
    for seed in seeds:
        for arm in ("grpo", "dynamic"):
            rows = steps(seed / arm)
            if not rows:
                continue
            equal = statistics.mean(r.get("frac_reward_zero_std", float("nan")) for r in rows)
            step_s = statistics.mean(r["timing/step_s"] for r in rows)
            line = (f"{seed.name} {arm}: {len(rows)} steps, s/step {step_s:.1f}, groups with all-equal rewards "
                    f"{equal:.2f} of those sampled, kl at the end {rows[-1].get('kl', 0):.4f}")
            if arm == "dynamic":
                left = statistics.mean(r["resample/equal_left"] for r in rows)
                rounds = sum(r["resample/rounds"] for r in rows)
                line += f"; of those trained on {left:.2f}, after {rounds:.0f} extra rounds"
            print(line)
            if args.copy_plots:
                target = Path(args.copy_plots)
                target.mkdir(parents=True, exist_ok=True)
                for png in sorted((seed / arm / "plots").glob("*.png")):
                    shutil.copy(png, target / f"{seed.name}_{arm}_{png.name}")


if __name__ == "__main__":
    main()
