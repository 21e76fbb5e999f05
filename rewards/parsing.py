"""Helpers the rewards share: completion text, the answer block, and numbers in text.

Nothing here imports anything heavy, so a custom reward can use these freely:

    from rewards.parsing import completion_text, extract_answer, find_numbers
"""

import re
from fractions import Fraction
from typing import Any

from rewards.layout import ANSWER_CLOSE, ANSWER_OPEN

# What TRL passes as one completion (and one prompt): plain text, or a list of chat messages.
Message = dict[str, Any]
Completion = str | list[Message]

# A number as people write it: an optional minus sign, digits optionally grouped in thousands
# with commas ("1,000"), optional decimals ("72.50"). A "-" right after a digit, letter or closing
# bracket is a subtraction ("10-3"), not a sign. A "." with no digit after it ends a sentence
# ("72.") and is not part of the number. Currency signs, "%" and units around it are ignored.
_NUMBER = re.compile(
    r"""
    (?:(?<![\w)\]])[-\u2212])?        # sign: "-" or the Unicode minus, unless it is a subtraction
    (?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)  # "1,000,000" or plain digits
    (?:\.\d+)?                        # decimals
    """,
    re.VERBOSE,
)


def completion_text(completion: Completion) -> str:
    """Return the text of one completion, conversational or plain.

    TRL hands rewards either plain strings or conversations: lists of messages such as
    ``[{"role": "assistant", "content": "..."}]``. For a conversation this joins the content of
    its assistant messages with newlines (tool messages are skipped); a message content given as
    a list of blocks (``[{"type": "text", "text": "..."}]``) contributes its text blocks.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        raise TypeError(
            f"a completion must be a string or a list of chat messages, got {type(completion).__name__}; "
            "pass what GRPOTrainer passes (plain strings, or [{'role': 'assistant', 'content': ...}])"
        )
    parts = []
    for message in completion:
        if not isinstance(message, dict) or "content" not in message:
            raise TypeError(
                f"a conversational completion must be a list of messages with a 'content' key, got {message!r:.80}"
            )
        if message.get("role", "assistant") == "assistant":
            parts.append(_content_text(message["content"]))
    return "\n".join(parts)


def _content_text(content: Any) -> str:
    """Text of one message content: a string, None (a tool call) or a list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
        )
    raise TypeError(f"a message content must be a string or a list of content blocks, got {type(content).__name__}")


def extract_answer(text: str) -> str | None:
    """Return the stripped content of the last ``<answer>`` block, or None when there is none.

    The block runs to the first ``</answer>`` after the last ``<answer>``, or to the end of the
    text when a generation was cut off before closing it (as the seed's extractor did).
    """
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    body = text[start + len(ANSWER_OPEN) :]
    end = body.find(ANSWER_CLOSE)
    if end >= 0:
        body = body[:end]
    return body.strip()


def find_numbers(text: str) -> list[str]:
    """Return the numbers written in ``text``, in order, as they were written ("1,000", "-3", "72.50")."""
    return [match.group() for match in _NUMBER.finditer(text)]


def to_number(written: str) -> Fraction:
    """Return the exact value of a number as ``find_numbers`` returns it: "1,000" -> 1000, "72.0" -> 72."""
    return Fraction(written.replace(",", "").replace("\u2212", "-"))


def single_number(text: str) -> Fraction | None:
    """Return the value of the only number in ``text``, or None when it holds none or several.

    This is how a final answer is read: "72", "72.0", "$72", "1,000", "72 dollars.", "x = 72"
    all give 72; "72 or 73" and "3/4" give None (ambiguous).
    """
    numbers = find_numbers(text)
    return to_number(numbers[0]) if len(numbers) == 1 else None


def last_number(text: str) -> Fraction | None:
    """Return the value of the last number in ``text``, or None when it holds none."""
    numbers = find_numbers(text)
    return to_number(numbers[-1]) if numbers else None


def gold_number(gold: Any) -> Fraction | None:
    """Return the gold answer's value (a dataset's ``answer`` column), or None when it is not one number."""
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int):
        return Fraction(gold)
    if isinstance(gold, float):
        return Fraction(gold) if gold == gold and abs(gold) != float("inf") else None
    if isinstance(gold, str):
        return single_number(gold)
    return None


def excerpt(text: str, limit: int = 80) -> str:
    """Return the start of ``text`` as a quoted one-line excerpt, for error messages and tables."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return repr(short)
