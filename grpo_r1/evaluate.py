"""Evaluate a model, or a trained adapter against its base model, on a recipe's questions.

    python -m grpo_r1.evaluate RECIPE.yaml [section.key=value ...] [--adapter RUN_DIR] [--split test]
                               [--limit N] [--samples K] [--engine E] [--batch-size B] [--seed S]
                               [--out FILE] [--no-base]

Prints accuracy, lenient accuracy, format rates, length, truncation and (K > 1) maj@K for each
model side by side, and writes eval.json (grpo_r1.evaluation says what each metric is).
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging as transformers_logging

from grpo_r1.cli import positive_int, recipe_from_args, recipe_parser, run_command
from grpo_r1.engines import ENGINES
from grpo_r1.evaluation import default_output, evaluate

ENGINE_HELP = """\
engines: --engine picks who samples (default: the recipe's generation.engine).
  hf           transformers' generate, --batch-size sequences at a time (default 8)
  hf-compiled  the training engine's static-KV-cache loop (CUDA graphs on a GPU), every
               question of a round of --batch-size sequences (default 256) in one batch
  vllm         an in-process vLLM of the base model, the adapter as a vLLM LoRA (rounds as hf-compiled)
  unsloth      samples through vllm here
Greedy answers use temperature 0 in every engine; the base model is the same model with the
adapter disabled (a vLLM request without the LoRA). --engine changes only who samples; the
override generation.engine=... works too but also goes through training's recipe checks
(e.g. generation.merged_weights needs hf-compiled). Progress bars go to stderr, the table to stdout.
"""


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m grpo_r1.evaluate", __doc__,
                           recipe_help="path of the recipe YAML file (a run folder's recipe.yaml works)")
    parser.add_argument("--adapter", help="a run folder or its adapter/ folder; without it the base model is evaluated")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N questions only")
    parser.add_argument("--samples", type=positive_int, default=1, metavar="K",
                        help="K > 1: also maj@K over K sampled completions")
    parser.add_argument("--engine", choices=ENGINES,
                        help="who samples (default the recipe's generation.engine; see engines below)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="sequences generated together (default 8 with hf, 256 with an engine)")
    parser.add_argument("--seed", type=int, help="sampling seed (default the recipe's run.seed)")
    parser.add_argument("--out",
                        help="where to write eval.json (default: the run folder with --adapter, else ./eval.json)")
    parser.add_argument("--no-base", action="store_true", help="with --adapter, skip evaluating the base model")
    parser.epilog = ENGINE_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_intermixed_args(argv)
    transformers_logging.disable_progress_bar()  # the weight-loading bar; progress is logged instead

    def body() -> int:
        recipe = recipe_from_args(args)
        out = default_output(args.adapter, args.out)
        report = evaluate(recipe, adapter=args.adapter, split=args.split, limit=args.limit, samples=args.samples,
                          batch_size=args.batch_size, seed=args.seed, compare_base=not args.no_base,
                          engine=args.engine)
        path = report.write(out)
        s = report.settings
        print(f"{s['questions']} questions of {s['data_source']} ({s['split']}), "
              f"up to {s['max_new_tokens']} new tokens, seed {s['seed']}, engine {s['engine']}")
        print(report.table())
        print(f"written to {path}")
        return 0

    return run_command(body, progress="stderr")  # the table and eval.json path on stdout, progress on stderr


if __name__ == "__main__":
    sys.exit(main())
