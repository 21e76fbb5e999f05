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

from grpo_r1.errors import GrpoR1Error
from grpo_r1.recipe import Recipe, load_recipe
from grpo_r1.trainer.grpo_config import check_training

LOGGER_NAME = "grpo_r1"


def recipe_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the recipe path and its `section.key=value` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None)
    parser.add_argument("recipe", help="path of the recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings that replace the recipe's")
    return parser


def recipe_from_args(args: argparse.Namespace, processes: int = 1) -> Recipe:
    """The recipe the parsed `recipe` and `overrides` arguments describe, every section checked, its
    `training:` against TRL for `processes` training processes (RecipeError when it is wrong)."""
    recipe = load_recipe(args.recipe, args.overrides)
    check_training(recipe, processes=processes, source=args.recipe)
    return recipe


def run_command(body: Callable[[], int], *, show_error: Callable[[GrpoR1Error], bool] = lambda error: True) -> int:
    """Run a command's body with grpo_r1's logging: its exit status, or 2 after printing a GrpoR1Error
    as one `error: ...` line on stderr (when `show_error` says this process should print it)."""
    setup_logging()
    try:
        return body()
    except GrpoR1Error as e:
        if show_error(e):
            print(f"error: {e}", file=sys.stderr)
        return 2


def setup_logging(level: int = logging.INFO) -> None:
    """Print the library's log records as `grpo_r1: message`: below WARNING on stdout, the rest on stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.propagate = False


class _ConsoleHandler(logging.Handler):
    """Writes to the sys.stdout / sys.stderr of the moment it writes (so captured streams see it too)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(f"{LOGGER_NAME}: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not end the run
            self.handleError(record)
