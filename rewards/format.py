"""Format rewards: does the completion follow the R1 layout?

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

The first four are the seed's (willccbb's GRPO gist / Unsloth's Qwen2.5 GRPO notebook) with
their published scales, rewritten so that multi-line completions score: the originals match
with ``re.match`` and no DOTALL, so ``.`` never crosses a newline and the soft and strict
rewards stay 0 on any real completion, whose reasoning spans lines. ``graded_format`` is new:
it gives partial credit per tag, so a weak model that only sometimes emits a tag still learns.

Format rewards never return None: a missing tag is exactly what they score, with 0.
"""

import re
from typing import Any

from rewards.layout import ANSWER_CLOSE, ANSWER_OPEN, REASONING_CLOSE, REASONING_OPEN, TAGS
from rewards.parsing import Completion, completion_text, extract_answer

# xml_count: the seed's tags with their newline layout, 0.125 each, minus 0.001 per character of
# text after </answer>.
XML_COUNT_TAGS = (f"{REASONING_OPEN}\n", f"\n{REASONING_CLOSE}\n", f"\n{ANSWER_OPEN}\n", f"\n{ANSWER_CLOSE}")
XML_TAG_CREDIT = 0.125
TRAILING_PENALTY_PER_CHAR = 0.001

FORMAT_SCORE = 0.5

# The seed's soft pattern with DOTALL so reasoning and answer may span lines. Leading whitespace
# is allowed, text after </answer> is not checked (xml_count penalizes it).
_SOFT_FORMAT = re.compile(rf"\s*{REASONING_OPEN}.*?{REASONING_CLOSE}\s*{ANSWER_OPEN}.*?{ANSWER_CLOSE}", re.DOTALL)

# The seed's strict layout, DOTALL, matched against the whole completion. The final newline is
# optional: a model that stops right after </answer> (end-of-sequence token, stripped from the
# decoded text) leaves none, and the seed's required "\n$" then failed on well-formed output.
_STRICT_FORMAT = re.compile(rf"{REASONING_OPEN}\n.*?\n{REASONING_CLOSE}\n{ANSWER_OPEN}\n.*?\n{ANSWER_CLOSE}\n?",
                            re.DOTALL)

_INTEGER = re.compile(r"[-\u2212]?\d+")


def xml_count_score(text: str) -> float:
    """Score one completion's tags as the seed's ``count_xml`` meant to: at most 0.5.

    Each of ``<reasoning>\\n``, ``\\n</reasoning>\\n``, ``\\n<answer>\\n`` and ``\\n</answer>`` that
    occurs exactly once earns 0.125. When ``</answer>`` is there, each non-blank character after
    it costs 0.001, so rambling after the answer scores lower and can go below 0.

    Unlike the seed, the trailing text is charged once, not twice, and a completion ending right
    at ``</answer>`` without a newline is not charged for its whole length.
    """
    score = sum((XML_TAG_CREDIT for tag in XML_COUNT_TAGS if text.count(tag) == 1), 0.0)
    if text.count(XML_COUNT_TAGS[-1]) == 1:
        trailing = text.split(XML_COUNT_TAGS[-1], 1)[1]
        score -= TRAILING_PENALTY_PER_CHAR * len(trailing.strip())
    return score


def graded_format_score(text: str) -> float:
    """Score one completion's tags with partial credit: 0.125 per tag, at most 0.5.

    A tag earns its credit when it occurs exactly once and after the tags before it in
    ``<reasoning>``, ``</reasoning>``, ``<answer>``, ``</answer>`` that earned theirs. Newlines and
    text around the tags do not matter.
    """
    score, position = 0.0, 0
    for tag in TAGS:
        if text.count(tag) != 1:
            continue
        index = text.find(tag)
        if index < position:
            continue
        score += XML_TAG_CREDIT
        position = index + len(tag)
    return score


def is_soft_format(text: str) -> bool:
    """True when the completion opens with a reasoning block followed by an answer block."""
    return _SOFT_FORMAT.match(text) is not None


def is_strict_format(text: str) -> bool:
    """True when the completion is exactly the R1 layout, each tag once, on lines of their own."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    return _STRICT_FORMAT.fullmatch(text) is not None


def xml_count(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
    """The seed's ``xmlcount_reward_func``: 0.125 per tag in place, minus 0.001 per trailing character.

    Max 0.5; below 0 when more than 500 characters follow ``</answer>``. Never None.
    """
    return [xml_count_score(completion_text(c)) for c in completions]


def soft_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
    """The seed's ``soft_format_reward_func``: 0.5 for ``<reasoning>...</reasoning> <answer>...</answer>``.

    Any whitespace between the blocks, any text inside them (newlines included). Never None.
    """
    return [FORMAT_SCORE if is_soft_format(completion_text(c)) else 0.0 for c in completions]


def strict_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
    """The seed's ``strict_format_reward_func``: 0.5 for the exact layout, else 0.

    ``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>`` with an optional final newline,
    each tag exactly once, nothing before or after. Never None.
    """
    return [FORMAT_SCORE if is_strict_format(completion_text(c)) else 0.0 for c in completions]


def int_answer(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
    """The seed's ``int_reward_func``: 0.5 when the answer block holds a bare integer ("72", "-3").

    This rewards the *format* of the answer, so it is strict: "72.0", "$72" or "72 apples" earn 0
    here (the correctness rewards accept them). No answer block: 0, not None (the seed read the
    whole completion instead; that paid 0.5 for a bare "72" with no tags at all).
    """
    rewards = []
    for completion in completions:
        answer = extract_answer(completion_text(completion))
        rewards.append(FORMAT_SCORE if answer is not None and _INTEGER.fullmatch(answer) else 0.0)
    return rewards


def graded_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
    """Partial credit for the tags: 0.125 per tag present once and in order, max 0.5. Never None.

    For weak models (SmolLM2-135M and the like) that never produce the whole layout: with only
    the seed's all-or-nothing format rewards every group scores 0 and GRPO has no signal, while
    here a completion with just ``<answer>...</answer>`` already earns 0.25 over its siblings.
    """
    return [graded_format_score(completion_text(c)) for c in completions]
