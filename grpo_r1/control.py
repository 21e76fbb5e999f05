"""Train a supervised control of a GRPO run: `python -m grpo_r1.control RUN_DIR --arm sft|longer-cold-start`.

    sft                 from the run's cold-start adapter, as many optimizer steps as GRPO took, on
                        the reference solutions of the questions GRPO drew at each step, with GRPO's
                        optimizer and learning-rate schedule
    longer-cold-start   the run's cold start, longer by GRPO's number of steps

The adapter goes to `<out>/adapter` (default out: RUN_DIR/control-<arm>); evaluate it with
`python -m grpo_r1.evaluate RUN_DIR/recipe.yaml --adapter <out>`. grpo_r1.trainer.control says more.
"""

from __future__ import annotations

import argparse
import sys

from grpo_r1.cli import run_command
from grpo_r1.trainer.control import ARMS, run_control


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.control", description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", help="a finished GRPO run with a cold start (runs/<name>)")
    parser.add_argument("--arm", choices=ARMS, required=True, help="which control to train (see above)")
    parser.add_argument("--out", help="folder for the control's adapter and metrics (default RUN_DIR/control-ARM)")
    parser.add_argument("--overwrite", action="store_true", help="replace a control already in the folder")
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)

    def body() -> int:
        result = run_control(args.run_dir, args.arm, args.out, overwrite=args.overwrite)
        print(f"grpo_r1: control {result.arm}: {result.steps} steps in {result.seconds:.0f} s; adapter in "
              f"{result.out_dir / 'adapter'}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
