"""What every command-line front door shares: the recipe arguments, the one-line error, the log format.

    parser = recipe_parser("python -m grpo_r1.evaluate", __doc__)   # RECIPE and section.key=value overrides
    args = parser.parse_intermixed_args(argv)
    return run_command(lambda: evaluate_command(args))               # exit 0, or 2 with one `error:` line

The library reports through `logging` under the "grpo_r1" logger; `setup_logging` (run_command
calls it) prints those records as `grpo_r1: message`, progress on stdout and warnings on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from grpo_r1.errors import GrpoR1Error
from grpo_r1.recipe import Recipe, load_recipe
from grpo_r1.trainer.grpo_config import check_training

LOGGER_NAME = "grpo_r1"


def recipe_parser(prog: str, doc: str | None,
                  recipe_help: str = "path of the recipe YAML file") -> argparse.ArgumentParser:
    """An argument parser with the recipe path and its `section.key=value` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("overrides", nargs="*", help="section.key=value settings that replace the recipe's")
    return parser


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of questions, samples, tokens)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe the parsed `recipe` and `overrides` arguments describe, every section checked, its
    `training:` against TRL too (RecipeError when it is wrong), for the commands that neither train
    nor benchmark (train() and run_bench() check `training:` themselves, for their process count)."""
    recipe = load_recipe(args.recipe, args.overrides)
    check_training(recipe)
    return recipe


def run_command(body: Callable[[], int], *, show_error: Callable[[GrpoR1Error], bool] = lambda error: True,
                progress: str = "stdout") -> int:
    """Run a command's body with grpo_r1's logging: its exit status, or 2 after printing a GrpoR1Error
    as one `error: ...` line on stderr (when `show_error` says this process should print it).
    `progress`: where progress lines go, "stdout" or "stderr" (a command whose result is on stdout)."""
    setup_logging(progress=progress)
    try:
        return body()
    except GrpoR1Error as e:
        if show_error(e):
            print(f"error: {e}", file=sys.stderr)
        return 2


def setup_logging(level: int = logging.INFO, progress: str = "stdout") -> None:
    """Print the library's log records as `grpo_r1: message`: progress (below WARNING) on `progress`
    ("stdout" or "stderr"), warnings and errors on stderr; around an open progress bar, not into it."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler(progress))
    logger.propagate = False


class _ConsoleHandler(logging.Handler):
    """Writes to the sys.stdout / sys.stderr of the moment it writes (so captured streams see it too),
    through tqdm, which moves a progress bar out of the way of the line."""

    def __init__(self, progress: str) -> None:
        super().__init__()
        self.progress = progress
        self.setFormatter(logging.Formatter(f"{LOGGER_NAME}: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING or self.progress == "stderr" else sys.stdout
        try:
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # a closed stream must not end the run
            self.handleError(record)
