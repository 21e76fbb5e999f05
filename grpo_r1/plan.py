"""Find the fastest settings that fit: `python -m grpo_r1.plan RECIPE.yaml [section.key=value ...] [options]`.

Tries the recipe with its memory and speed levers changed, each candidate in a process of its own:
the worst-case preflight step under the memory cap says whether it fits, and a candidate that fits
runs a few real GRPO steps whose median is its step time. Prints every candidate's worst-case peak
memory and step time, and the fastest that fits as the overrides to train with (grpo_r1.planning
says which candidates are run). `run.auto_fit: true` in a recipe does the same at the start of
training.

Options:
    --mem GiB          the memory the run may use: on a GPU each candidate's process is capped there
                       (an RTX 4090: 24), on a CPU the preflight's peak RSS is held to it
                       (default: all the device has)
    --levers LIST      the levers to try, comma-separated (default micro_batch,checkpointing,liger,
                       merged_weights; also optim and load_in_4bit, which change the numbers trained,
                       unsloth, Unsloth's model and kernels for training, and padding_free, the
                       scoring forwards packed with each question's prompt once)
    --micro-batches LIST  the micro-batch sizes to try (default: the recipe's, its halvings and
                       doublings, and the whole step)
    --steps N          timed steps per fitting candidate (default 3), after --warmup W (default 1)
    --margin F         candidates within this fraction of the fastest count as fast as it: the
                       recipe's own settings stay when they are among them, otherwise the one
                       with the least memory at the worst case is picked (default 0.05)
    --out FILE         the plan as JSON (default plan.json)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from grpo_r1.cli import positive_int, recipe_parser, run_command
from grpo_r1.errors import RecipeError
from grpo_r1.planning import DEFAULT_LEVERS, Plan, PlanSettings, plan_recipe, probe_candidate
from grpo_r1.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m grpo_r1.plan", __doc__)
    parser.add_argument("--mem", type=float, help="the memory the run may use, GiB (default: the device's)")
    parser.add_argument("--levers", help=f"levers to try, comma-separated (default {','.join(DEFAULT_LEVERS)})")
    parser.add_argument("--micro-batches", default="", help="micro-batch sizes to try, comma-separated")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps per fitting candidate")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default 1)")
    parser.add_argument("--margin", type=float, default=0.05, help="within this fraction counts as fastest")
    parser.add_argument("--out", default="plan.json", help="where to write the plan as JSON")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # one candidate in this process, into this JSON file
    parser.add_argument("--base-dir", help=argparse.SUPPRESS)  # the original recipe's folder, for a probe
    parser.add_argument("--source", help=argparse.SUPPRESS)  # the original recipe's path, for a probe's messages
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        levers = None if args.levers is None else tuple(lever.strip() for lever in args.levers.split(",")
                                                        if lever.strip())
        settings = PlanSettings(levers=levers,
                                memory_gib=args.mem, steps=args.steps, warmup=args.warmup, margin=args.margin,
                                micro_batches=_sizes(args.micro_batches))
        recipe = load_recipe(args.recipe, args.overrides)
        if args.probe:
            recipe.base_dir = Path(args.base_dir) if args.base_dir else recipe.base_dir
            recipe.source = args.source or recipe.source
            Path(args.probe).write_text(json.dumps(probe_candidate(recipe, settings), indent=2) + "\n")
            return 0
        print(f"plan: {args.recipe}: levers {', '.join(settings.named_levers)}"
              + (f", {args.mem:g} GiB" if args.mem else "") + "; one process per candidate", flush=True)
        plan = plan_recipe(recipe, settings, on_probe=lambda probe: print(f"plan: {probe.describe()}", flush=True))
        Path(args.out).write_text(json.dumps(plan.as_dict(), indent=2) + "\n")
        print(format_plan(plan))
        if plan.best is None and plan.reason != "no candidate fits":
            print(f"plan: {plan.reason}; the candidates' notes say why")
            print(f"plan: figures in {args.out}")
            return 1
        if plan.best is None:
            print(f"plan: nothing fits{f' in {args.mem:g} GiB' if args.mem else ''}; the candidates' notes say "
                  f"why; try --levers with load_in_4bit, or a shorter generation.max_completion_length")
            print(f"plan: figures in {args.out}")
            return 1
        picked = list(plan.best.candidate.overrides)
        keys = {item.split("=", 1)[0] for item in picked}
        kept = [item for item in args.overrides if item.split("=", 1)[0].strip() not in keys | {"run.auto_fit"}]
        if recipe.run.auto_fit:
            picked.append("run.auto_fit=false")  # the command trains with the pick instead of planning again
        print(f"plan: {plan.reason}: {plan.best.s_per_step:.2f} s/step; train with:")
        print(f"    {shlex.join(['python', '-m', 'grpo_r1.train', args.recipe, *kept, *picked])}")
        print(f"plan: figures in {args.out}")
        return 0

    return run_command(body)


def format_plan(plan: Plan) -> str:
    """The probes as a table: settings changed, status, worst-case peak, step time, questions/s, steps' peaks."""
    rows = ["| candidate | status | worst-case peak GiB | s/step | questions/s | "
            "steps' peak allocated / reserved GiB |", "| --- | --- | --- | --- | --- | --- |"]
    for probe in plan.probes:
        mark = " **(pick)**" if probe is plan.best else ""
        rows.append(f"| {probe.candidate.describe()}{mark} | {probe.status} | {_number(probe.worst_case_peak_gib)} | "
                    f"{_number(probe.s_per_step)} | {_number(probe.questions_per_s)} | "
                    f"{_peaks(probe.step_peak_allocated_gib, probe.step_peak_reserved_gib)} |")
    return "\n".join(rows)


def _peaks(allocated: float | None, reserved: float | None) -> str:
    return "" if allocated is None or reserved is None else f"{allocated:.2f} / {reserved:.2f}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _sizes(text: str) -> tuple[int, ...] | None:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise RecipeError(f"--micro-batches takes whole numbers, comma-separated (e.g. 6,12,24); "
                          f"got {text!r}") from None
    return sizes or None


if __name__ == "__main__":
    sys.exit(main())
