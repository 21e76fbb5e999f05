"""``math_correctness``: answers checked by Hugging Face's math-verify, for any math dataset.

math-verify parses LaTeX and plain expressions into SymPy and compares them symbolically and
numerically, so "1/2", "0.5", "\\frac{1}{2}", "\\boxed{\\dfrac12}" and "2/4" all match a gold of
1/2, which the number-only rewards in ``rewards.correctness`` cannot do. It is slower (about
1-5 ms per completion, the first call of a process about 0.2 s while SymPy warms up), and this
module imports SymPy, so it is only imported when a recipe selects ``math_correctness``.

What is compared is the answer the completion commits to (``rewards.parsing.committed_answer``),
never an expression math-verify happens to find first: in "The answer to 3 - 8 is 2." that is
"2". When the gold is a plain number and the committed answer is plain text (no LaTeX), the
numbers are compared as the number rewards compare them (same reading of ".5", "1,000", "７２"),
so math-verify's leniency cannot pay a wrong final number; math-verify judges the rest (LaTeX,
fractions, symbolic golds). Words are never read as algebra: a gold or answer with words in it
is not wrapped in ``$...$`` (which would turn "forty two" into the product of symbols f, o, r...).

Timeouts: math-verify bounds each parse and comparison with ``signal.alarm``, which only works in
the main thread; anywhere else it raises ValueError. Here the timeout is used in the main thread
(where TRL calls synchronous rewards) and turned off in other threads, where the text is capped
at ``MAX_ANSWER_CHARS`` instead so parsing stays bounded. In the main thread it replaces any
``SIGALRM`` alarm of the caller while it runs.
"""

import re
import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from math_verify import parse, verify

from rewards.correctness import stated_value
from rewards.layout import Layout, layout_from
from rewards.parsing import (
    Completion,
    committed_answer,
    completion_text,
    extract_answer,
    gold_number,
    gold_text,
    has_math_latex,
)

CORRECT_SCORE = 2.0
TIMEOUT_SECONDS = 5
MAX_ANSWER_CHARS = 2000

_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]{2,}")


def _timeout() -> int | None:
    """math-verify's timeout: signal-based, so only in the main thread."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def has_words(text: str) -> bool:
    """True when ``text`` holds a word of two or more letters outside LaTeX commands ("forty", "yes")."""
    return _WORD.search(_LATEX_COMMAND.sub(" ", text)) is not None


def _parse_answer(answer: str, timeout: int | None) -> list[Any]:
    """Parse a bare answer. math-verify only finds LaTeX such as "\\sqrt{2}" between $...$, so retry
    so, unless the answer has words in it (they would become products of symbols)."""
    parsed = parse(answer, parsing_timeout=timeout)
    if not parsed and "$" not in answer and not has_words(answer):
        parsed = parse(f"${answer}$", parsing_timeout=timeout)
    return parsed


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    """Parse a gold answer once per process; words give nothing (the gold is unreadable)."""
    if has_words(committed_answer(gold)) and not has_math_latex(gold):
        return ()
    return tuple(_parse_answer(gold, timeout))


def is_math_equal(gold: Any, prediction: str, bare: bool = True) -> bool | None:
    """True when ``prediction`` commits to the same math answer as ``gold``; None when gold is unreadable.

    ``bare`` says ``prediction`` is just the answer (an answer block) rather than prose. Either way
    the committed answer is what is compared (``committed_answer``); for prose that commits to
    nothing in particular, math-verify looks for the final answer in the whole text.
    """
    gold = gold_text(gold)
    if not gold:
        return None
    prediction = prediction[-MAX_ANSWER_CHARS:]
    committed = committed_answer(prediction)
    gold_value = gold_number(gold)
    if gold_value is not None and not has_math_latex(committed):
        return stated_value(committed) == gold_value
    timeout = _timeout()
    gold_parsed = _parse_gold(gold, timeout)
    if not gold_parsed:
        return None
    whole_prose = not bare and committed == prediction.strip()
    predicted = parse(committed, parsing_timeout=timeout) if whole_prose else _parse_answer(committed, timeout)
    if not predicted:
        return False
    return verify(list(gold_parsed), predicted, timeout_seconds=timeout)


def math_correctness_reward(tags: Mapping[str, str] | Layout | None = None) -> Callable[..., list[float | None]]:
    """Make ``math_correctness`` for a layout's answer tag (``tags={"answer": "final"}``); default ``<answer>``."""
    layout = layout_from(tags)

    def math_correctness(
        prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
    ) -> list[float | None]:
        """2.0 when the completion's committed answer equals the gold ``answer`` column, per math-verify.

        The answer block is checked when there is one; otherwise the whole completion, where the
        committed answer is the last ``\\boxed{}``, what follows "the answer is", or the stated
        result of the last equation, so it also pays models that do not use the tags. A
        completion with no readable answer scores 0. Gold that states nothing readable (words,
        empty, None): None.

        Lenient where math-verify is, on LaTeX: "\\frac{144}{2}" and "72" both match a gold of 72.
        """
        rewards: list[float | None] = []
        for completion, gold in zip(completions, answer, strict=True):
            if gold is None:
                rewards.append(None)
                continue
            text = completion_text(completion)
            block = extract_answer(text, layout)
            equal = is_math_equal(gold, text, bare=False) if block is None else is_math_equal(gold, block)
            rewards.append(None if equal is None else CORRECT_SCORE if equal else 0.0)
        return rewards

    return math_correctness


math_correctness = math_correctness_reward()
