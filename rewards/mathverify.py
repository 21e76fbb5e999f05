"""``math_correctness``: answers checked by Hugging Face's math-verify, for any math dataset.

math-verify parses LaTeX and plain expressions into SymPy and compares them symbolically and
numerically, so "1/2", "0.5", "\\frac{1}{2}", "\\boxed{\\dfrac12}" and "2/4" all match a gold of
1/2, which the number-only rewards in ``rewards.correctness`` cannot do. It is slower (about
1-5 ms per completion, the first call of a process about 0.2 s while SymPy warms up), and this
module imports SymPy, so it is only imported when a recipe selects ``math_correctness``.

Timeouts: math-verify bounds each parse and comparison with ``signal.alarm``, which only works in
the main thread; anywhere else it raises ValueError. Here the timeout is used in the main thread
(where TRL calls synchronous rewards) and turned off in other threads, where the text is capped
at ``MAX_ANSWER_CHARS`` instead so parsing stays bounded. In the main thread it replaces any
``SIGALRM`` alarm of the caller while it runs.
"""

import threading
from functools import lru_cache
from typing import Any

from math_verify import parse, verify

from rewards.parsing import Completion, completion_text, extract_answer

CORRECT_SCORE = 2.0
TIMEOUT_SECONDS = 5
MAX_ANSWER_CHARS = 2000


def _timeout() -> int | None:
    """math-verify's timeout: signal-based, so only in the main thread."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse_answer(answer: str, timeout: int | None) -> list[Any]:
    """Parse a bare answer. math-verify only finds LaTeX such as "\\sqrt{2}" between $...$, so retry so."""
    parsed = parse(answer, parsing_timeout=timeout)
    if not parsed and "$" not in answer:
        parsed = parse(f"${answer}$", parsing_timeout=timeout)
    return parsed


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    """Parse a gold answer once per process."""
    return tuple(_parse_answer(gold, timeout))


def is_math_equal(gold: str, prediction: str, bare: bool = True) -> bool | None:
    """True when ``prediction`` states the same math answer as ``gold``; None when gold is unreadable.

    ``bare`` says ``prediction`` is just the answer (an answer block) rather than prose, so bare
    LaTeX in it may be read as math: in prose, "$...$" around words would turn them into symbols.
    """
    timeout = _timeout()
    gold_parsed = _parse_gold(gold.strip(), timeout)
    if not gold_parsed:
        return None
    prediction = prediction[-MAX_ANSWER_CHARS:]
    predicted = _parse_answer(prediction, timeout) if bare else parse(prediction, parsing_timeout=timeout)
    if not predicted:
        return False
    return verify(list(gold_parsed), predicted, timeout_seconds=timeout)


def math_correctness(
    prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """2.0 when math-verify finds the completion's answer equal to the gold ``answer`` column.

    The answer block is checked when there is one; otherwise the whole completion, where
    math-verify looks for the final answer itself (``\\boxed{}``, "the answer is ...", the last
    expression), so it also pays models that do not use the tags. A completion with no answer
    math-verify can read scores 0. Gold that math-verify cannot read (or empty): None.

    Lenient on purpose, like math-verify: "72%" matches a gold of 72 (it compares the written
    number too), and in "3 + 69 = 72" the right-hand side counts.
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None or not str(gold).strip():
            rewards.append(None)
            continue
        text = completion_text(completion)
        block = extract_answer(text)
        equal = is_math_equal(str(gold), text, bare=False) if block is None else is_math_equal(str(gold), block)
        rewards.append(None if equal is None else CORRECT_SCORE if equal else 0.0)
    return rewards
