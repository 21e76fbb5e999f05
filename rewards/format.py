"""Format rewards: does the completion follow the R1 layout?

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

The first four are the seed's (willccbb's GRPO gist / Unsloth's Qwen2.5 GRPO notebook) with
their published scales, rewritten so that multi-line completions score: the gist's first version
matches with ``re.match`` and no DOTALL, so ``.`` never crosses a newline and its soft and strict
rewards stay 0 on any real completion, whose reasoning spans lines (its later version added
DOTALL). ``graded_format`` is new: it gives partial credit per tag, so a weak model that only
sometimes emits a tag still learns.

Each is made for a layout by its ``*_reward(tags=...)`` factory (``tags={"reasoning": "think"}``
scores DeepSeek-R1's ``<think>`` layout); the module-level functions score the seed's tags.
Format rewards never return None: a missing tag is exactly what they score, with 0.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

from rewards.layout import R1, Layout, layout_from
from rewards.parsing import Completion, completion_text, extract_answer

RewardFunc = Callable[..., list[float]]

XML_TAG_CREDIT = 0.125
TRAILING_PENALTY_PER_CHAR = 0.001
FORMAT_SCORE = 0.5

_INTEGER = re.compile(r"[-\u2212]?\d+")


def xml_count_tags(layout: Layout = R1) -> tuple[str, str, str, str]:
    """The seed's ``count_xml`` tags with their newlines: ``<reasoning>\\n``, ``\\n</reasoning>\\n``, ..."""
    return (f"{layout.reasoning_open}\n", f"\n{layout.reasoning_close}\n", f"\n{layout.answer_open}\n",
            f"\n{layout.answer_close}")


def xml_count_score(text: str, layout: Layout = R1) -> float:
    """Score one completion's tags as the seed's ``count_xml`` meant to: at most 0.5.

    Each of ``<reasoning>\\n``, ``\\n</reasoning>\\n``, ``\\n<answer>\\n`` and ``\\n</answer>`` that
    occurs exactly once earns 0.125. When ``</answer>`` is there, each non-blank character after
    it costs 0.001, so rambling after the answer scores lower and can go below 0.

    Unlike the seed, the trailing text is charged once, not twice, and a completion ending right
    at ``</answer>`` without a newline is not charged for its whole length.
    """
    tags = xml_count_tags(layout)
    score = sum((XML_TAG_CREDIT for tag in tags if text.count(tag) == 1), 0.0)
    if text.count(tags[-1]) == 1:
        trailing = text.split(tags[-1], 1)[1]
        score -= TRAILING_PENALTY_PER_CHAR * len(trailing.strip())
    return score


def graded_format_score(text: str, layout: Layout = R1) -> float:
    """Score one completion's tags with partial credit: 0.125 per tag, at most 0.5.

    A tag earns its credit when it occurs exactly once and after the tags before it in
    ``<reasoning>``, ``</reasoning>``, ``<answer>``, ``</answer>`` that earned theirs. Newlines and
    text around the tags do not matter.
    """
    score, position = 0.0, 0
    for tag in layout.tags:
        if text.count(tag) != 1:
            continue
        index = text.find(tag)
        if index < position:
            continue
        score += XML_TAG_CREDIT
        position = index + len(tag)
    return score


def is_soft_format(text: str, layout: Layout = R1) -> bool:
    """True when the completion opens with a reasoning block followed by an answer block.

    The seed's soft pattern with DOTALL, so reasoning and answer may span lines. Leading
    whitespace is allowed, text after the closing answer tag is not checked (xml_count charges it).
    """
    r_open, r_close, a_open, a_close = (re.escape(tag) for tag in layout.tags)
    return re.match(rf"\s*{r_open}.*?{r_close}\s*{a_open}.*?{a_close}", text, re.DOTALL) is not None


def is_strict_format(text: str, layout: Layout = R1) -> bool:
    """True when the completion is exactly the R1 layout, each tag once, on lines of their own.

    The seed's strict layout, DOTALL, matched against the whole completion. Whitespace after the
    closing answer tag is allowed: a model that stops right after it (end-of-sequence token,
    stripped from the decoded text) leaves none, and the seed's first version, which required one
    "\\n", failed on well-formed output; its later version accepts one or two.
    """
    if any(text.count(tag) != 1 for tag in layout.tags):
        return False
    r_open, r_close, a_open, a_close = (re.escape(tag) for tag in layout.tags)
    pattern = rf"{r_open}\n.*?\n{r_close}\n{a_open}\n.*?\n{a_close}\s*"
    return re.fullmatch(pattern, text, re.DOTALL) is not None


Tags = Mapping[str, str] | Layout | None


def xml_count_reward(tags: Tags = None) -> RewardFunc:
    """Make ``xml_count`` for a layout (``tags={"reasoning": "think"}``); default the seed's tags."""
    layout = layout_from(tags)

    def xml_count(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
        """The seed's ``xmlcount_reward_func``: 0.125 per tag in place, minus 0.001 per trailing character.

        Max 0.5; below 0 when more than 500 characters follow the closing answer tag. Never None.
        """
        return [xml_count_score(completion_text(c), layout) for c in completions]

    return xml_count


def soft_format_reward(tags: Tags = None) -> RewardFunc:
    """Make ``soft_format`` for a layout; default the seed's tags."""
    layout = layout_from(tags)

    def soft_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
        """The seed's ``soft_format_reward_func``: 0.5 for ``<reasoning>...</reasoning> <answer>...</answer>``.

        Any whitespace between the blocks, any text inside them (newlines included). Never None.
        """
        return [FORMAT_SCORE if is_soft_format(completion_text(c), layout) else 0.0 for c in completions]

    return soft_format


def strict_format_reward(tags: Tags = None) -> RewardFunc:
    """Make ``strict_format`` for a layout; default the seed's tags."""
    layout = layout_from(tags)

    def strict_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
        """The seed's ``strict_format_reward_func``: 0.5 for the exact layout, else 0.

        ``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>``, then only whitespace,
        each tag exactly once, nothing before. Never None.
        """
        return [FORMAT_SCORE if is_strict_format(completion_text(c), layout) else 0.0 for c in completions]

    return strict_format


def int_answer_reward(tags: Tags = None) -> RewardFunc:
    """Make ``int_answer`` for a layout's answer tag; default ``<answer>``."""
    layout = layout_from(tags)

    def int_answer(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
        """The seed's ``int_reward_func``: 0.5 when the answer block holds a bare integer ("72", "-3").

        This rewards the *format* of the answer, so it is strict: "72.0", "$72" or "72 apples" earn
        0 here (the correctness rewards accept them). No answer block: 0, not None (the seed read
        the whole completion instead; that paid 0.5 for a bare "72" with no tags at all).
        """
        rewards = []
        for completion in completions:
            answer = extract_answer(completion_text(completion), layout)
            rewards.append(FORMAT_SCORE if answer is not None and _INTEGER.fullmatch(answer) else 0.0)
        return rewards

    return int_answer


def graded_format_reward(tags: Tags = None) -> RewardFunc:
    """Make ``graded_format`` for a layout; default the seed's tags."""
    layout = layout_from(tags)

    def graded_format(prompts: list[Completion], completions: list[Completion], **kwargs: Any) -> list[float]:
        """Partial credit for the tags: 0.125 per tag present once and in order, max 0.5. Never None.

        For weak models (SmolLM2-135M and the like) that never produce the whole layout: with only
        the seed's all-or-nothing format rewards every group scores 0 and GRPO has no signal, while
        here a completion with just ``<answer>...</answer>`` already earns 0.25 over its siblings.
        """
        return [graded_format_score(completion_text(c), layout) for c in completions]

    return graded_format


xml_count = xml_count_reward()
soft_format = soft_format_reward()
strict_format = strict_format_reward()
int_answer = int_answer_reward()
graded_format = graded_format_reward()
