"""What each reward of a recipe pays for, before training:

    python -m grpo_r1.rewards check RECIPE.yaml [section.key=value ...] [--rows N] [--generate N]

Scores sample completions of a few rows (the gold solution in R1 layout, a wrong answer, prose
without tags, and with --generate N that many completions of the recipe's model) with every reward
of the recipe, as the trainer would, and prints reward x sample with mean, std and None rate
(grpo_r1.scoring.check).
"""

from __future__ import annotations

import argparse
import sys

from grpo_r1.cli import recipe_from_args, recipe_parser, run_command
from grpo_r1.scoring.check import check_recipe_rewards

USAGE = "usage: python -m grpo_r1.rewards check RECIPE.yaml [section.key=value ...] [--rows N] [--generate N]"


def check_parser() -> argparse.ArgumentParser:
    """The arguments of `python -m grpo_r1.rewards check`."""
    parser = recipe_parser("python -m grpo_r1.rewards check",
                           "Score sample completions of a few dataset rows with every reward of a recipe, as the "
                           "trainer would: the gold solution in the recipe's layout, a wrong answer, prose without "
                           "tags, and with --generate N that many completions of the recipe's base model (their "
                           "texts printed under the table). Prints reward x sample with mean, std and None rate.")
    parser.add_argument("--rows", type=int, default=2, help="dataset rows to take (default 2)")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="also sample N completions per row from the recipe's base model and print them")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = check_parser()
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\ncommands:\n  check    what each reward of a recipe pays for\n\n"
              + parser.format_help())
        return 0
    if not argv or argv[0] != "check":
        got = f"unknown command {argv[0]!r}; " if argv else ""
        print(f"{USAGE}\n{got}the one command is check (python -m grpo_r1.rewards --help)", file=sys.stderr)
        return 2
    args = parser.parse_intermixed_args(argv[1:])

    def body() -> int:
        print(check_recipe_rewards(recipe_from_args(args), rows=args.rows, generate=args.generate))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
