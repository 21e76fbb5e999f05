"""Whether TRL can call a reward function with a dataset's columns, checked before the model loads."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from grpo_r1.errors import RewardError
from grpo_r1.scoring.guard import RewardFunc

# What GRPOTrainer (TRL 1.14.2, _calculate_rewards) passes to every reward function, all as
# keywords, besides the dataset columns.
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
# Dataset columns TRL does not pass on under their own name (the prompt arrives as ``prompts``).
NOT_PASSED_COLUMNS = ("prompt", "completion", "completion_ids")


def signature_of(func: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def passed_keywords(columns: Iterable[str]) -> list[str]:
    """Every keyword TRL passes to a reward function for a dataset with these columns."""
    passed = list(TRL_KEYWORDS)
    passed += [column for column in columns if column not in NOT_PASSED_COLUMNS and column not in passed]
    return passed


def check_reward_signature(func: RewardFunc, name: str, columns: Iterable[str]) -> None:
    """Raise RewardError unless TRL can call ``func`` with this dataset's columns.

    TRL calls ``func(prompts=..., completions=..., completion_ids=..., trainer_state=...,
    log_extra=..., log_metric=..., **columns)``, so ``func`` must accept each of those keywords
    (by name, or through ``**kwargs``), and every parameter it requires must be among them.
    """
    columns = list(columns)
    passed = passed_keywords(columns)
    signature = signature_of(func)
    if signature is None:
        raise RewardError(
            f"reward {name!r}: cannot read the parameters of {func!r}; wrap it in a Python function "
            "def f(prompts, completions, **kwargs)"
        )
    parameters = list(signature.parameters.values())
    shown_columns = ", ".join(column for column in columns if column not in NOT_PASSED_COLUMNS) or "none"
    for parameter in parameters:
        required = parameter.default is inspect.Parameter.empty
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and required:
            raise RewardError(
                f"reward {name!r}: parameter {parameter.name!r} is positional-only, but TRL passes everything by "
                "keyword; remove the '/' from its parameters"
            )
        if not required or parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if parameter.name not in passed:
            message = (
                f"reward {name!r} requires {parameter.name!r}, which is not a dataset column. "
                f"Columns it can read: {shown_columns} (and TRL's {', '.join(TRL_KEYWORDS)})."
            )
            close = difflib.get_close_matches(parameter.name, passed, n=1, cutoff=0.6)
            if close:
                message += f" Did you mean {close[0]!r}?"
            message += " Rename the parameter, give it a default, or add the column to the dataset."
            raise RewardError(message)
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = {
        parameter.name
        for parameter in parameters
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [keyword for keyword in passed if keyword not in accepted]
    if missing:
        message = (
            f"reward {name!r} does not accept {', '.join(repr(keyword) for keyword in missing)}, which TRL passes "
            "to every reward (all dataset columns but 'prompt', plus completion_ids, trainer_state, log_extra and "
            "log_metric), so it would crash at the first step; add **kwargs: "
            f"def {name}(prompts, completions, ..., **kwargs)"
        )
        if "completions" in missing:
            message += f". If {name!r} is a factory, give it kwargs in the recipe so that it is called with them"
        raise RewardError(message)
