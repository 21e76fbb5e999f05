"""Sample completions of a dataset row (the gold solution in R1 layout, a wrong answer, untagged
prose), and the call of every reward on them before training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from grpo_r1.errors import DataError, RewardError
from grpo_r1.prompts import solution_steps
from grpo_r1.scoring.guard import NONE_WARNING_FRACTION, RewardFunc
from grpo_r1.scoring.table import reward_table
from rewards.layout import R1, Layout
from rewards.parsing import gold_number, gold_text

logger = logging.getLogger(__name__)


def sample_completions(row: Mapping[str, Any], layout: Layout = R1) -> dict[str, str]:
    """Make three completions for a dataset row, to see what each reward pays for.

    Returns ``{"gold": ..., "wrong": ..., "malformed": ...}``: the row's own GSM8K solution in the
    target layout (``layout``'s reasoning block holds the solution without calculator notes, its
    answer block the gold),
    the same with a wrong answer, and the same reasoning as plain prose ending "The answer is 72."
    with no tags, as a model that ignores the format writes it. Raises DataError when the row has
    no ``solution`` or ``answer``.
    """
    missing = [key for key in ("solution", "answer") if key not in row or row[key] is None]
    if missing:
        raise DataError(
            f"sample_completions needs the row's {' and '.join(repr(key) for key in missing)}, but it has only "
            f"{', '.join(map(repr, row))}; use a GSM8K-style dataset with 'solution' (ending '#### <gold>') "
            "and 'answer'"
        )
    reasoning = solution_steps(str(row["solution"]))
    answer = gold_text(row["answer"])
    return {
        "gold": layout.text(reasoning, answer),
        "wrong": layout.text(reasoning, _wrong_answer(answer)),
        "malformed": f"{reasoning}\nThe answer is {answer}.",
    }


def try_rewards_on_samples(funcs: Sequence[RewardFunc], dataset: Any, layout: Layout = R1) -> None:
    """Call every reward once, as TRL would, on the sample completions of the dataset's first row.

    The samples are ``sample_completions``' three (the gold solution in the target layout, a wrong
    answer, prose without tags), the kinds of text a model writes. A reward that raises on them,
    returns the wrong number of values, or returns NaN raises the guard's RewardError now, before
    a run folder exists, instead of at the first training step. Does nothing for a dataset without
    rows or without the ``solution`` and ``answer`` columns the samples are made from.
    """
    if len(dataset) == 0 or not {"solution", "answer", "prompt"} <= set(dataset.column_names):
        return
    row = dataset[0]
    texts = list(sample_completions(row, layout).values())
    columns = {name: [row[name]] * len(texts) for name in dataset.column_names}
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    try:
        rows = reward_table(funcs, [row["prompt"]] * len(texts), completions, columns)
    except RewardError as exc:
        raise RewardError(f"{exc} (found before training, on sample completions of the data's first row)") from None
    for table_row in rows:
        if table_row.none_rate > NONE_WARNING_FRACTION:
            logger.warning("reward %r %s (sample completions of the data's first row, before training)",
                           table_row.name, table_row.warning)


def _wrong_answer(answer: str) -> str:
    """A different answer: the gold plus one when it is a number."""
    value = gold_number(answer)
    if value is None:
        return f"not {answer}"
    wrong = value + 1
    return str(wrong.numerator) if wrong.denominator == 1 else f"{float(wrong):g}"
