"""Merge a run's LoRA adapter into its base model and save a plain Hugging Face model folder.

    python -m grpo_r1.export RUN_DIR --merged OUT_DIR [--dtype bfloat16|float16|float32] [--base MODEL]
                             [--overwrite] [--push USER/REPO]

Writes OUT_DIR: the merged weights (safetensors), config, the tokenizer with its chat template
and a README.md model card; `AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it without
PEFT. A QLoRA run (model.load_in_4bit) is merged into a 16-bit copy of its base. `--push`
uploads the written folder to the Hugging Face hub. For GGUF, run llama.cpp's
convert_hf_to_gguf.py on OUT_DIR (grpo_r1.exporting says more).
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging as transformers_logging

from grpo_r1.cli import run_command
from grpo_r1.exporting import DTYPES, GGUF_COMMAND, check_repo_id, export_merged, push_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.export", description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run folder (runs/<name>), its adapter/ folder, or one of its checkpoints")
    parser.add_argument("--merged", required=True, metavar="OUT_DIR", help="the folder to write the merged model to")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="dtype of the merged weights (default bfloat16)")
    parser.add_argument("--base", metavar="MODEL",
                        help="merge into this base model instead of the recipe's model.name_or_path "
                             "(e.g. the 16-bit original of a base stored in 4 bits)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT_DIR")
    parser.add_argument("--push", metavar="REPO", help="then upload OUT_DIR to this Hugging Face hub model repo")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()  # the weight-loading bar; progress is logged instead

    def body() -> int:
        if args.push:
            check_repo_id(args.push)  # a bad repo id fails before the merge, not after it
        out = export_merged(args.run_dir, args.merged, dtype=args.dtype, base=args.base, overwrite=args.overwrite)
        print(out)
        print(f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r}) (plain transformers, no PEFT); "
              f"for GGUF, in a llama.cpp checkout: {GGUF_COMMAND.format(out=out)}")
        if args.push:
            print(f"pushed to {push_folder(out, args.push)}")
        return 0

    return run_command(body, progress="stderr")  # the folder and the hint on stdout, progress on stderr


if __name__ == "__main__":
    sys.exit(main())
