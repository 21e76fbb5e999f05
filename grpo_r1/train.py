"""Train a LoRA adapter with GRPO: `python -m grpo_r1.train RECIPE.yaml [section.key=value ...]`.

`--resume [RUN_DIR|auto]` continues a run from its newest complete checkpoint; `--overwrite`
replaces an existing run folder. Ctrl-C saves a checkpoint, prints the command that resumes, and
exits with 130. The stages of a run are grpo_r1.training's.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from tqdm import tqdm

from grpo_r1.cli import recipe_parser, run_command
from grpo_r1.errors import GrpoR1Error
from grpo_r1.launch import Launch, launch_from_env, leave
from grpo_r1.recipe import load_recipe
from grpo_r1.run.folder import RECIPE_FILE
from grpo_r1.run.interrupt import EXIT_CODE, TrainingInterrupted
from grpo_r1.run.tracking import read_metrics
from grpo_r1.trainer.console import summary_line
from grpo_r1.training import train


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m grpo_r1.train", __doc__)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR|auto",
                        help="continue a run from its newest complete checkpoint; auto (the default): the recipe's "
                             "run folder, else the newest runs/<recipe>-<date>-<time> with a checkpoint")
    args = parser.parse_intermixed_args(argv)
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.append(args.resume)  # `--resume a.b=c`: an override, not a run folder
        args.resume = "auto"
    launch = Launch()

    def body() -> int:
        nonlocal launch
        launch = launch_from_env()  # one of several processes under accelerate launch, or the only one
        try:
            recipe = load_recipe(args.recipe, args.overrides)  # train() checks training: for this launch
        except GrpoR1Error as e:
            e.on_every_process = True  # every process reads the same file: rank 0 prints the error
            raise
        started = time.monotonic()
        try:
            result = train(recipe, overwrite=args.overwrite, resume=args.resume, recipe_name=Path(args.recipe).stem,
                           launch=launch)
        except GrpoR1Error:
            close_progress_bars()  # a bar the failure left open would run into the error line
            raise
        except TrainingInterrupted as stop:
            if launch.is_main:
                print(interrupted_message(stop, args.recipe, args.overrides), file=sys.stderr)
            return EXIT_CODE
        if launch.is_main:
            print("grpo_r1: " + summary_line(result.run_dir, result.adapter_dir, result.global_step,
                                             time.monotonic() - started, read_metrics(result.run_dir),
                                             result.run_dir / RECIPE_FILE))
        return 0

    try:
        return run_command(body, show_error=lambda e: launch.is_main or not getattr(e, "on_every_process", False))
    finally:
        leave(launch)


def close_progress_bars() -> None:
    """End the tqdm progress bars still open (training's, when a step failed), each on its own line."""
    for bar in list(tqdm._instances):
        bar.close()


def interrupted_message(stop: TrainingInterrupted, recipe_path: str, overrides: list[str]) -> str:
    """What a stopped run prints: where it stopped and the exact command that continues it."""
    how = "stopped" if stop.saved else "aborted"
    if stop.checkpoint is None:
        return (f"grpo_r1: {how} at step {stop.step} before any checkpoint was saved; "
                f"start again with --overwrite, or with a new run.output_dir")
    command = shlex.join(["python", "-m", "grpo_r1.train", recipe_path, *overrides, "--resume", str(stop.run_dir)])
    return f"grpo_r1: {how} at step {stop.step}; checkpoint {stop.checkpoint} is complete. Resume with:\n  {command}"


if __name__ == "__main__":
    sys.exit(main())
