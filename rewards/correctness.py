"""Correctness rewards for GSM8K-style numeric answers, compared exactly as numbers.

Both read the gold answer from the dataset's ``answer`` column ("72"; "1,000" and "-3" work too)
and compare values, not strings, so a correct answer is not punished for how it is written:
"72", "72.0", "$72", "1,000" for 1000, "72." or "72 apples", surrounded by spaces and newlines.

None policy (the same for both): None, "skip", only when the *gold* answer is not a single
number, since then nothing can be judged. A completion with no answer, or no number, scores 0:
treating it as "skip" would leave it out of the logged mean and make accuracy look better the
less often the model answers.
"""

from typing import Any

from rewards.parsing import Completion, completion_text, extract_answer, gold_number, last_number, single_number

CORRECT_SCORE = 2.0
BARE_CORRECT_SCORE = 1.0


def gsm8k_correctness(
    prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """The seed's ``correctness_reward_func``: 2.0 when the answer block states the gold number.

    The answer block must hold exactly one number, equal in value to the gold: "72", "72.0",
    "$72", "72 apples.", "x = 72" pass for gold 72; "72 or 73" and "3 + 69 = 72" do not (write
    the result alone). No answer block: 0.0 (the seed compared the whole completion instead).
    Gold not a single number: None.
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_value = gold_number(gold)
        if gold_value is None:
            rewards.append(None)
            continue
        block = extract_answer(completion_text(completion))
        correct = block is not None and single_number(block) == gold_value
        rewards.append(CORRECT_SCORE if correct else 0.0)
    return rewards


def lenient_correctness(
    prompts: list[Completion], completions: list[Completion], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """Partial credit for a right answer in any layout: 2.0 in an answer block, 1.0 without one.

    With an answer block, the last number in the block must equal the gold (2.0). Without one,
    the last number in the whole completion must (1.0), so a weak model that ends with "... so
    she sold 72 clips." is paid for the arithmetic and paid more once it learns the tags. Use it
    instead of ``gsm8k_correctness`` for models that do not follow the format yet (pair it with
    ``graded_format``); both together would pay a right answer twice.
    Gold not a single number: None.
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_value = gold_number(gold)
        if gold_value is None:
            rewards.append(None)
            continue
        text = completion_text(completion)
        block = extract_answer(text)
        if block is not None:
            rewards.append(CORRECT_SCORE if last_number(block) == gold_value else 0.0)
        else:
            rewards.append(BARE_CORRECT_SCORE if last_number(text) == gold_value else 0.0)
    return rewards
