"""Correctness rewards for GSM8K-style numeric answers, compared exactly as numbers.

Both read the gold from the dataset's ``answer`` column ("72"; "1,000", "-3", "0.5" and GSM8K's
raw "... #### 72" work too) and compare values, not strings, so a correct answer is not punished
for how it is written: "72", "72.0", "$72", "1,000" for 1000, "72." or "72 apples", surrounded by
spaces and newlines. How numbers are read is documented once, in ``rewards.parsing``.

The verdict is the answer the completion commits to (``rewards.parsing.committed_answer``): in
"3 + 69 = 72" and "The answer to 17 - 15 is 3" that is the stated result (72, 3), not the
expression before it; an expression alone ("48 + 24") counts by its value.

None policy (the same for both): None, "skip", only when the *gold* states no single value, since
then nothing can be judged. A completion with no answer, or no number, scores 0: treating it as
"skip" would leave it out of the logged mean and make accuracy look better the less often the
model answers.
"""

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from rewards.layout import Layout, layout_from
from rewards.parsing import (
    Completion,
    answer_value,
    committed_answer,
    completion_text,
    extract_answer,
    gold_number,
    has_math_latex,
    last_number,
)

CORRECT_SCORE = 2.0
BARE_CORRECT_SCORE = 1.0

RewardFunc = Callable[..., list[float | None]]  # f(prompts, completions, **columns)


def gsm8k_correctness_reward(tags: Mapping[str, str] | Layout | None = None) -> RewardFunc:
    """Make ``gsm8k_correctness`` for a layout's answer tag (``tags={"answer": "final"}``); default ``<answer>``."""
    layout = layout_from(tags)

    def gsm8k_correctness(
        prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
    ) -> list[float | None]:
        """The seed's ``correctness_reward_func``: 2.0 when the answer block states the gold value.

        The block's committed answer must be one number, or an arithmetic expression, equal in
        value to the gold: "72", "72.0", "$72", "72 apples.", "x = 72", "3 + 69 = 72", "48 + 24"
        pass for gold 72; "72 or 73", "70 = 72" and "The answer to 17 - 15 is 3" (gold 2) do not.
        No answer block: 0.0 (the seed compared the whole completion instead). Gold states no
        single value: None.
        """
        rewards: list[float | None] = []
        for completion, gold in zip(completions, answer, strict=True):
            gold_value = gold_number(gold)
            if gold_value is None:
                rewards.append(None)
                continue
            block = extract_answer(completion_text(completion), layout)
            correct = block is not None and answer_value(committed_answer(block)) == gold_value
            rewards.append(CORRECT_SCORE if correct else 0.0)
        return rewards

    return gsm8k_correctness


def lenient_correctness_reward(tags: Mapping[str, str] | Layout | None = None) -> RewardFunc:
    """Make ``lenient_correctness`` for a layout's answer tag; default ``<answer>``."""
    layout = layout_from(tags)

    def lenient_correctness(
        prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
    ) -> list[float | None]:
        """Partial credit for a right answer in any layout: 2.0 in an answer block, 1.0 without one.

        The committed answer (of the block when there is one, else of the whole text) decides: its
        value when it states one, else its last number. So a weak model that ends with "... so she
        sold 72 clips." is paid for the arithmetic (1.0), and paid more once it learns the tags
        (2.0). Use it instead of ``gsm8k_correctness`` for models that do not follow the format yet
        (pair it with ``graded_format``); both together would pay a right answer twice.
        Gold states no single value: None.
        """
        rewards: list[float | None] = []
        for completion, gold in zip(completions, answer, strict=True):
            gold_value = gold_number(gold)
            if gold_value is None:
                rewards.append(None)
                continue
            text = completion_text(completion)
            block = extract_answer(text, layout)
            score = CORRECT_SCORE if block is not None else BARE_CORRECT_SCORE
            rewards.append(score if stated_value(block if block is not None else text) == gold_value else 0.0)
        return rewards

    return lenient_correctness


def stated_value(text: str) -> Fraction | None:
    """The value ``text`` commits to: the committed answer's value, else its last number.

    None when it states none, or states LaTeX math ("\\frac{1}{2}") that only math-verify reads.
    """
    committed = committed_answer(text)
    if has_math_latex(committed):
        return None
    value = answer_value(committed)
    return value if value is not None else last_number(committed)


gsm8k_correctness = gsm8k_correctness_reward()
lenient_correctness = lenient_correctness_reward()
