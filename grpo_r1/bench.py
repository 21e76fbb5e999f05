"""Measure GRPO steps: `python -m grpo_r1.bench RECIPE.yaml [section.key=value ...] [options]`.

Runs `--warmup` + `--steps` real GRPO steps of the recipe and prints, and writes as JSON, s/step (the
median of the measured steps, with min and max), questions/s, completion tokens/s, peak GPU memory,
the split of a step, the forward + backward's achieved TFLOP/s against a matrix product timed on
the device, the decode's weight bytes/s against a device copy, the loss and grad_norm, and every
step on its own line (grpo_r1.benchmark; the formulas: grpo_r1.throughput). A warning says when
the advantages were all zero (a reward that pays every completion alike: the real path was not
timed), when fewer than 5 steps were measured, and when torch compiled during the measured steps.

Options:
    --steps N          measured steps (default 5; the median is reported, so take at least 5);
                       --warmup W steps first, not measured (default 2: torch.compile and CUDA
                       graphs are built during the first)
    --gpu-mem GiB      cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction)
                       to stand in for a smaller card, e.g. 24 for an RTX 4090
    --compare LIST     also run these variants of the same shape, each in its own process, and
                       print them side by side:  trl  (plain TRL: transformers + PEFT, TRL's own
                       generate and TRL's defaults for everything the shape does not fix) and
                       unsloth  (Unsloth's patched model and trainer, generation without vLLM)
    --out FILE         the JSON (default bench.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from grpo_r1.benchmark import VARIANTS, format_results, format_steps, run_bench
from grpo_r1.cli import recipe_parser, run_command
from grpo_r1.errors import RecipeError
from grpo_r1.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m grpo_r1.bench", __doc__)
    parser.add_argument("--steps", type=int, default=5, help="measured steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (default 2)")
    parser.add_argument("--gpu-mem", type=float, help="cap GPU memory at this many GiB")
    parser.add_argument("--compare", default="", help="also run these variants: trl, unsloth (comma-separated)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default bench.json)")
    parser.add_argument("--variant", default="grpo_r1", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        recipe = load_recipe(args.recipe, args.overrides)  # run_bench checks training: against TRL
        compare = [v.strip() for v in args.compare.split(",") if v.strip()]
        for variant in compare:
            if variant not in VARIANTS[1:]:
                raise RecipeError(f"--compare takes {', '.join(VARIANTS[1:])}; got {variant!r}")
        results = [run_bench(recipe, steps=args.steps, warmup=args.warmup, gpu_mem=args.gpu_mem, variant=args.variant)]
        for variant in compare:
            results.append(_run_in_subprocess(args, variant))
        Path(args.out).write_text(json.dumps(results if compare else results[0], indent=2) + "\n")
        measured = [r for r in results if "error" not in r]
        for result in measured:
            print(format_steps(result))
        print(format_results(measured))
        for failed in (r for r in results if "error" in r):
            print(f"{failed['variant']}: not measured: {failed['error']}")
        print(f"bench: figures in {args.out}")
        return 0

    return run_command(body)


def _run_in_subprocess(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One variant in a fresh process: its own GPU memory, and no patches (Unsloth's) leak between variants."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "grpo_r1.bench", args.recipe, *args.overrides, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--variant", variant, "--out", str(out)]
        if args.gpu_mem is not None:
            cmd += ["--gpu-mem", str(args.gpu_mem)]
        print(f"bench: running the {variant} variant in its own process", flush=True)
        proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"variant": variant, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
        return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
