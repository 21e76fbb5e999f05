"""Try a trained model: ask the adapter questions and watch it answer, in the recipe's prompt format.

    python -m grpo_r1.chat RUN_DIR [--question "..." ...] [--base] [--max-new-tokens N] [--temperature T]
                           [--recipe RECIPE.yaml] [--seed S]

With --question (repeatable) it answers those and exits; otherwise it reads questions from stdin,
one a line, until end of input, an empty line or "exit". Each answer is streamed as it is
generated, labelled "adapter:" (and, with --base, followed by the base model's answer, "base:"),
then judged on one line: whether it follows the strict R1 layout and what its answer block says.
Greedy unless --temperature is above 0. RUN_DIR is a run folder (its recipe.yaml and adapter/), a
checkpoint folder, or an adapter folder with --recipe.
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging as transformers_logging

from grpo_r1.chatting import ChatSession, load_chat
from grpo_r1.cli import positive_int, run_command

EXIT_WORDS = ("exit", "quit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.chat", description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (runs/<name>), a checkpoint or an adapter")
    parser.add_argument("--question", "-q", action="append", help="ask this and exit (repeat for several)")
    parser.add_argument("--base", action="store_true", help="also show the base model's answer (adapter disabled)")
    parser.add_argument("--max-new-tokens", type=positive_int, metavar="N",
                        help="longest answer in tokens (default the recipe's generation.max_completion_length)")
    parser.add_argument("--temperature", type=_temperature, default=0.0, metavar="T",
                        help="0 (the default) answers greedily; above 0 samples, with the recipe's top_p")
    parser.add_argument("--seed", type=int, help="sampling seed (default the recipe's run.seed)")
    parser.add_argument("--recipe", help="the recipe YAML to use (default the run folder's recipe.yaml)")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()  # the weight-loading bar

    def body() -> int:
        session = load_chat(args.run_dir, recipe=args.recipe, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, seed=args.seed)
        if args.question:
            for question in args.question:
                print(f"question: {question}")
                _answer(session, question, base=args.base)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print('Ask a question (an empty line, "exit" or Ctrl-D ends).')
        try:
            while (question := _read_question(interactive)) is not None:
                if not interactive:
                    print(f"question: {question}")
                _answer(session, question, base=args.base)
        except KeyboardInterrupt:  # Ctrl-C while an answer is generated
            print()
            return 130
        return 0

    # The answers on stdout, loading messages on stderr.
    return run_command(body, progress="stderr")


def _answer(session: ChatSession, question: str, *, base: bool) -> None:
    """Stream the adapter's answer (then the base model's) with its label, then the layout verdict."""
    for label, use_base in [("adapter", False)] + ([("base", True)] if base else []):
        print(f"{label}: ", end="", flush=True)
        reply = session.reply(question, base=use_base, on_text=lambda text: print(text, end="", flush=True))
        print()
        print(f"{label} verdict: {reply.verdict()}", flush=True)


def _read_question(interactive: bool) -> str | None:
    """The next question from stdin; None at end of input, an empty line or an exit word."""
    try:
        line = input("question> ") if interactive else sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        return None
    if not interactive and not line:  # end of input
        return None
    line = line.strip()
    return None if not line or line.lower() in EXIT_WORDS else line


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or more, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
