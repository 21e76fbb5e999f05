"""Draw a run's training curves again: `python -m grpo_r1.plot RUN_DIR [--out FOLDER]`.

Writes RUN_DIR/plots/rewards.png and training.png from RUN_DIR/metrics.jsonl (grpo_r1.run.plots).
"""

from __future__ import annotations

import argparse
import sys

from grpo_r1.cli import run_command
from grpo_r1.run.plots import plot_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (holding metrics.jsonl)")
    parser.add_argument("--out", help="folder for the PNG files (default RUN_DIR/plots)")
    args = parser.parse_args(argv)

    def body() -> int:
        for path in plot_run(args.run_dir, args.out):
            print(path)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
