"""The reward table: every reward on a set of sample completions, scored as TRL would at a step
(the core of `python -m grpo_r1.rewards check`)."""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from grpo_r1.scoring.guard import (
    NONE_WARNING_FRACTION,
    RewardFunc,
    guard_reward,
    ignore,
    none_warning,
    none_warnings_off,
)
from grpo_r1.scoring.signature import NOT_PASSED_COLUMNS


@dataclass
@dataclass
class RewardRow:
    """What one reward scored on a set of sample completions."""

    name: str
    values: list[float | None]  # one per sample, None where the reward skipped it
    mean: float | None  # over the non-None values, as TRL logs rewards/<name>/mean
    std: float | None  # sample standard deviation of the same, as TRL logs rewards/<name>/std
    none_rate: float  # fraction of samples the reward skipped
    warning: str | None  # set when the reward cannot tell these samples apart, or skips most of them


def reward_table(
    funcs: Sequence[RewardFunc],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    *,
    completion_ids: Sequence[Sequence[int]] | None = None,
    trainer_state: Any = None,
) -> list[RewardRow]:
    """Score every sample with every reward, as TRL would at a training step; one row per reward.

    Args:
        funcs: reward functions (unguarded ones are guarded here, so errors name the completion).
        prompts, completions: one prompt and one completion per sample, conversational or plain.
        columns: dataset columns, each a list with one item per sample (``prompt`` is ignored).
        completion_ids: token ids per completion; without a tokenizer, empty lists are passed.
        trainer_state: passed as ``trainer_state``; default a fresh ``transformers.TrainerState``.
    """
    count = len(completions)
    if len(prompts) != count:
        raise ValueError(f"reward_table got {len(prompts)} prompts for {count} completions; give one per completion")
    for column, values in columns.items():
        if len(values) != count:
            raise ValueError(
                f"column {column!r} has {len(values)} items for {count} completions; give one per completion"
            )
    if trainer_state is None:
        from transformers.trainer_callback import TrainerState  # noqa: PLC0415 (slow import, only here)

        trainer_state = TrainerState()
    kwargs: dict[str, Any] = {key: list(values) for key, values in columns.items() if key not in NOT_PASSED_COLUMNS}
    kwargs["completion_ids"] = [list(ids) for ids in completion_ids] if completion_ids is not None else [[]] * count
    kwargs.update(trainer_state=trainer_state, log_extra=ignore, log_metric=ignore)
    rows = []
    for func in funcs:
        guarded = guard_reward(func)
        with none_warnings_off():  # the row's warning says it
            output = guarded(prompts=list(prompts), completions=list(completions), **kwargs)
            if inspect.isawaitable(output):
                output = asyncio.run(output)
        rows.append(_summarize(guarded.__name__, output, kwargs))
    return rows


def _summarize(name: str, values: list[float | None], columns: Mapping[str, Any]) -> RewardRow:
    scored = [value for value in values if value is not None]
    mean = statistics.fmean(scored) if scored else None
    std = statistics.stdev(scored) if len(scored) > 1 else None
    none_rate = (len(values) - len(scored)) / len(values) if values else 0.0
    warning = None
    if values and none_rate > NONE_WARNING_FRACTION:
        first = next(index for index, value in enumerate(values) if value is None)
        warning = none_warning(len(values) - len(scored), len(values), columns, first)
    elif len(values) > 1 and len(set(scored)) == 1:
        warning = (
            f"is {scored[0]:g} on every sample: it cannot tell these completions apart, and in GRPO a reward that "
            "scores a whole group the same adds nothing to the advantage"
        )
    return RewardRow(name=name, values=values, mean=mean, std=std, none_rate=none_rate, warning=warning)


def format_reward_table(rows: Sequence[RewardRow], labels: Sequence[str] | None = None) -> str:
    """Render rows as a plain-text table: one line per reward, one column per sample, then stats."""
    count = max((len(row.values) for row in rows), default=0)
    labels = list(labels) if labels is not None else [f"#{index}" for index in range(count)]
    if len(labels) != count:
        raise ValueError(f"format_reward_table got {len(labels)} labels for {count} samples")
    header = ["reward", *labels, "mean", "std", "None"]
    lines = [
        [
            row.name,
            *(_cell(value) for value in row.values),
            _cell(row.mean),
            _cell(row.std),
            f"{row.none_rate:.0%}",
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *lines]) for column in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [render(header), *(render(line) for line in lines)]
    out += [f"warning: {row.name} {row.warning}" for row in rows if row.warning]
    return "\n".join(out)


def print_reward_table(
    rows: Sequence[RewardRow], labels: Sequence[str] | None = None, file: TextIO | None = None
) -> None:
    """Print ``format_reward_table(rows, labels)``."""
    print(format_reward_table(rows, labels), file=file or sys.stdout)


def _cell(value: float | None) -> str:
    return "None" if value is None else f"{value:.3f}"
