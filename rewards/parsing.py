"""Helpers the rewards share: completion text, the answer block, numbers in text, and the answer
a completion commits to.

Nothing here imports anything heavy, so a custom reward can use these freely:

    from rewards.parsing import completion_text, extract_answer, find_numbers, committed_answer

How numbers are read (the same for every built-in correctness reward):

- digits in any script (full-width "７２", Arabic-Indic) count as digits; "-", "\u2212" (the
  Unicode minus) and the full-width "\uff0d" as a minus sign, except right after a digit, letter
  or closing bracket, where "-" is a subtraction ("10-3");
- "1,000" and "1,000,000" are one number (a comma between groups of three digits); so are
  "1\u00a0000" and "1\u2009000" (a no-break or thin space between groups of three), but "1 000"
  with an ordinary space is two numbers, as in "2 100-dollar bills";
- decimals with a point: "72.50", ".5" and "-.5"; a comma is never a decimal point ("1,5" is
  1 and 5); a point with no digit after it ends a sentence ("72." is 72);
- vulgar fractions "\u00bd", "1\u00bd" (= 3/2), "\u00be"; "3/4" is an expression (0.75 as an
  answer, see ``answer_value``); no scientific notation ("1e3" is 1 and 3), no percent scaling
  ("72%" is 72), no number words ("seventy-two" is not a number);
- currency signs, "%", units and other words around a number are ignored.
"""

import ast
import re
import unicodedata
from fractions import Fraction
from typing import Any

from rewards.layout import R1, Layout

# What TRL passes as one completion (and one prompt): plain text, or a list of chat messages.
Message = dict[str, Any]
Completion = str | list[Message]

_VULGAR = "\u00bc-\u00be\u2150-\u215e"  # ¼ ½ ¾ and ⅐ ... ⅞
_GROUP_SPACE = "\u00a0\u2009\u202f"  # no-break, thin and narrow no-break space
_NUMBER_BODY = rf"""
    (?:
        (?:\d{{1,3}}(?:,\d{{3}})+(?!\d)         # "1,000,000"
         |\d{{1,3}}(?:[{_GROUP_SPACE}]\d{{3}})+(?!\d)  # "1 000" with a no-break or thin space
         |\d+)                                  # plain digits
        (?:\.\d+)?                              # decimals
        [{_VULGAR}]?                            # "1½"
     |(?<![\w.])\.\d+                           # ".5"
     |[{_VULGAR}]                               # "½"
    )
"""
# A "-" right after a digit, letter or closing bracket is a subtraction ("10-3"), not a sign
# (Unicode minus signs are normalized to "-" first).
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?" + _NUMBER_BODY, re.VERBOSE)
_UNSIGNED_NUMBER = re.compile(_NUMBER_BODY, re.VERBOSE)
_MINUS = str.maketrans({"\u2212": "-", "\uff0d": "-"})

# Where a completion states its final result: the last "answer is", "=", "is", ... that a number follows.
_ANSWER_PHRASE = re.compile(
    r"\banswer\b(?:\s+(?:to|for|of)\b[^\n]*?)?\s*(?:\bis\b|\bwas\b|\bequals\b|=|:)\s*", re.IGNORECASE
)
_RESULT_MARK = re.compile(r"=|:\s|\b(?:is|are|was|were|equals|gives|makes)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?!\d)\s|\.$|\n")
_BOXED = "\\boxed{"
_MATH_DELIMITERS = re.compile(r"^\s*(?:\$+|\\\(|\\\[)\s*|\s*(?:\$+|\\\)|\\\])\s*$")
_ARITHMETIC = re.compile(r"[\d\s.+\-*/()\u00d7\u00f7\u00b7]+")
_EXPRESSION_LIMIT = 120
# LaTeX commands that only dress a number ("72\\text{ apples}", "\\left(3\\right)"); any other
# command ("\\frac", "\\sqrt", "\\pi") makes the text math that the number reading cannot judge.
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
_DRESSING_COMMANDS = frozenset({"text", "textbf", "mathrm", "mbox", "quad", "qquad", "left", "right", "displaystyle"})


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


def extract_answer(text: str, layout: Layout = R1) -> str | None:
    """Return the stripped content of the last answer block, or None when there is none.

    The block runs to the first closing tag after the last opening one, or to the end of the
    text when a generation was cut off before closing it (as the seed's extractor did).
    """
    start = text.rfind(layout.answer_open)
    if start < 0:
        return None
    body = text[start + len(layout.answer_open) :]
    end = body.find(layout.answer_close)
    if end >= 0:
        body = body[:end]
    return body.strip()


def normalize_digits(text: str) -> str:
    """``text`` with digits of any script as ASCII digits and Unicode minus signs as "-"."""
    text = text.translate(_MINUS)
    if text.isascii():
        return text
    return re.sub(r"\d", lambda match: str(unicodedata.decimal(match.group())), text)


def find_numbers(text: str) -> list[str]:
    """Return the numbers written in ``text``, in order, as ``to_number`` reads them ("1,000", "-3", ".5", "1½")."""
    return [match.group() for match in _NUMBER.finditer(normalize_digits(text))]


def to_number(written: str) -> Fraction:
    """Return the exact value of a number as ``find_numbers`` returns it: "1,000" -> 1000, ".5" -> 1/2, "1½" -> 3/2."""
    written = normalize_digits(written)
    for separator in "," + _GROUP_SPACE:
        written = written.replace(separator, "")
    if written and written[-1] in _VULGAR_VALUES:
        whole = written[:-1]
        sign = -1 if whole.startswith("-") else 1
        digits = whole.lstrip("-")
        return sign * (Fraction(digits or 0) + _VULGAR_VALUES[written[-1]])
    return Fraction(written)


_VULGAR_VALUES = {
    chr(code): Fraction(unicodedata.numeric(chr(code))).limit_denominator(10)
    for code in [0xBC, 0xBD, 0xBE, *range(0x2150, 0x215F)]
}


def single_number(text: str) -> Fraction | None:
    """Return the value of the only number in ``text``, or None when it holds none or several.

    "72", "72.0", "$72", "1,000", "72 dollars." all give 72; "72 or 73" and "3/4" give None.
    """
    numbers = find_numbers(text)
    return to_number(numbers[0]) if len(numbers) == 1 else None


def last_number(text: str) -> Fraction | None:
    """Return the value of the last number in ``text``, or None when it holds none."""
    numbers = find_numbers(text)
    return to_number(numbers[-1]) if numbers else None


def committed_answer(text: str) -> str:
    """Return the part of ``text`` that states its final answer (an answer block's content, or prose).

    The completion commits to, in this order: the content of the last ``\\boxed{...}``; else what
    follows the last "answer is" / "answer to ... is" / "answer:" / "answer =" up to the end of
    that sentence; else what follows the last "=", "is", "equals", ... that a number follows
    ("3 + 69 = 72" -> "72", "The total is 72 apples" -> "72 apples"); else the whole text.
    So "The answer to 17 - 15 is 3" commits to "3", not to the expression "17 - 15".
    """
    text = text.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    for match in reversed(phrases):
        rest = _first_sentence(text[match.end() :])
        if rest:
            return rest
    for match in reversed(list(_RESULT_MARK.finditer(text))):
        rest = text[match.end() :].strip()
        if any(char.isdigit() for char in rest):
            return rest
    return text


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return (text[: end.start()] if end else text).strip()


def last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None


def has_math_latex(text: str) -> bool:
    """True when ``text`` holds a LaTeX command that is math ("\\frac", "\\sqrt", "\\pi"), not dressing ("\\text")."""
    return any(match.group(1) not in _DRESSING_COMMANDS for match in _LATEX_COMMAND.finditer(text))


def answer_value(text: str) -> Fraction | None:
    """Return the value ``text`` states, when it states exactly one: a single number, or an arithmetic
    expression of numbers ("3 + 69", "3/4", "(2 + 3) × 4"), evaluated exactly; else None.

    ``text`` is an answer as ``committed_answer`` returns it. "$72", "72 apples", "x = 72"
    (after ``committed_answer``) and "48 + 24" give 72; "72 or 73", "forty" and LaTeX math such
    as "\\sqrt{2}" or "\\frac{1}{2}" give None (``math_correctness`` reads those).
    """
    if has_math_latex(text):
        return None
    stripped = _MATH_DELIMITERS.sub("", text.strip()).rstrip(".").strip()
    value = _arithmetic_value(stripped)
    return value if value is not None else single_number(stripped)


def _arithmetic_value(text: str) -> Fraction | None:
    """The exact value of an expression of numbers and + - * / × ÷ · ( ), or None when ``text`` is not one."""
    text = normalize_digits(text)
    if len(text) > _EXPRESSION_LIMIT or len(find_numbers(text)) < 2:
        return None
    source = _UNSIGNED_NUMBER.sub(lambda match: f"({_fraction_literal(to_number(match.group()))})", text)
    if not _ARITHMETIC.fullmatch(source):
        return None
    source = source.replace("\u00d7", "*").replace("\u00b7", "*").replace("\u00f7", "/")
    try:
        tree = ast.parse(source, mode="eval")
        return _evaluate(tree.body)
    except (SyntaxError, ZeroDivisionError, ValueError, RecursionError):
        return None


def _fraction_literal(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


def gold_text(gold: Any) -> str:
    """The gold answer as text: GSM8K's raw form ("... #### 72") gives what follows the last "####"."""
    text = str(gold)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip()


def gold_number(gold: Any) -> Fraction | None:
    """Return the gold answer's value (a dataset's ``answer`` column), or None when it states no single value.

    Numbers, "1,000", "-3", "0.5", "3/4", "$72" and GSM8K's raw "... #### 72" are read; words,
    empty strings, None, booleans, NaN and "72 or 73" give None.
    """
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int):
        return Fraction(gold)
    if isinstance(gold, float):
        return Fraction(gold) if gold == gold and abs(gold) != float("inf") else None
    if isinstance(gold, str):
        return answer_value(committed_answer(gold_text(gold)))
    return None


def excerpt(text: str, limit: int = 80) -> str:
    """Return the start of ``text`` as a quoted one-line excerpt, for error messages and tables."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return repr(short)
