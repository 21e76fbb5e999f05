"""Dynamic sampling, as DAPO does it: replace the groups that carry no signal.

A group whose completions all scored alike has an advantage of 0 for every completion, so it moves
the adapter only through the KL term: its sampling and its forward and backward passes teach
nothing. With `generation.resample_equal_groups: N`, after each generation round such groups are
replaced by groups of other training questions, sampled and scored the same way (rewards,
reference and old log-probabilities), in up to N more rounds per step; a group still equal after
them is trained on as it is. The replacement questions are drawn by a generator seeded with
run.seed and the step, so a resumed run draws the same ones.

What it costs is more sampling per step: each extra round samples num_generations completions
for each group still to replace. Per-step metrics (in metrics.jsonl and the trackers):

    resample/rounds       extra generation rounds this step
    resample/replaced     groups replaced by groups with a signal
    resample/equal_left   fraction of the trained groups whose rewards are still all equal

TRL's own reward metrics (reward, frac_reward_zero_std, rewards/*) average over every round
sampled, the replaced groups included (the equal-rewards guard reads resample/equal_left instead),
and completions.jsonl shows groups of the last round sampled. Refused where a group's advantages
depend on the rest of the batch (training.scale_rewards: batch, multi_objective_aggregation:
normalize_then_sum) and on several processes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import torch

from grpo_r1.errors import RecipeError
from grpo_r1.trainer import trl_private

logger = logging.getLogger(__name__)

_LEFT_PADDED = trl_private.GENERATION_BATCH_LEFT_PADDED
_RIGHT_PADDED = trl_private.GENERATION_BATCH_RIGHT_PADDED
_PER_ROW = trl_private.GENERATION_BATCH_PER_ROW
_TOKEN_COUNT = trl_private.GENERATION_BATCH_TOKEN_COUNT


def install_dynamic_sampling(trainer: Any, rounds: int, seed: int) -> None:
    """Make `trainer` replace equal-reward groups for up to `rounds` more rounds per step (off for 0).
    Install before the step timer (grpo_r1.trainer.build does)."""
    if rounds:
        rewards = trl_private.record_rewards(trainer)
        trl_private.wrap_generate_and_score(trainer, lambda generate: EqualGroupResampler(trainer, generate, rewards,
                                                                                          rounds, seed))


class EqualGroupResampler:
    """Stands in for GRPOTrainer._generate_and_score_completions: the original, then replacements."""

    def __init__(self, trainer: Any, generate: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 rewards: Callable[[], torch.Tensor], rounds: int, seed: int) -> None:
        self.trainer = trainer
        self.generate = generate
        self.rewards = rewards
        self.rounds = rounds
        self.seed = seed

    def __call__(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        group = self.trainer.num_generations
        batch = self.generate(inputs)
        if not self.trainer.model.training:  # evaluation batches are left as sampled
            return batch
        equal = self._equal_groups()
        groups, rounds, replaced = len(batch["advantages"]) // group, 0, 0
        step = self.trainer.state.global_step
        rng = random.Random(f"{self.seed}:{step}")  # the same replacements when a run resumes at this step
        dataset = self.trainer.train_dataset
        while equal and rounds < self.rounds:
            rows = [dataset[rng.randrange(len(dataset))] for _ in equal]
            fresh = self.generate([row for row in rows for _ in range(group)])
            rounds += 1
            flat = set(self._equal_groups())
            useful = [g for g in range(len(rows)) if g not in flat]
            take = min(len(equal), len(useful))
            batch = splice_groups(batch, fresh, list(zip(equal[:take], useful[:take], strict=True)), group,
                                  pad_id=self.trainer.processing_class.pad_token_id)
            equal = equal[take:]
            replaced += take
        trl_private.add_step_metric(self.trainer, "resample/rounds", float(rounds))
        trl_private.add_step_metric(self.trainer, "resample/replaced", float(replaced))
        trl_private.add_step_metric(self.trainer, "resample/equal_left", len(equal) / max(groups, 1))
        return batch

    def _equal_groups(self) -> list[int]:
        weights = self.trainer.reward_weights.to(self.rewards().device)
        return equal_groups(self.rewards(), weights, self.trainer.num_generations)


def equal_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, group: int) -> list[int]:
    """The groups (of `group` consecutive completions) whose weighted rewards are all alike (within
    float rounding), as TRL sums them: each row's rewards times `weights`, NaN (a function that
    returned None) left out; a group no function scored counts as alike too."""
    scored = ~torch.isnan(rewards_per_func).all(dim=1)
    total = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1).view(-1, group)
    scored = scored.view(-1, group)
    high = torch.where(scored, total, -torch.inf).amax(dim=1)
    low = torch.where(scored, total, torch.inf).amin(dim=1)
    alike = ~scored.any(dim=1) | torch.isclose(high, low, rtol=1e-5, atol=1e-6)
    return torch.nonzero(alike).flatten().tolist()


def splice_groups(batch: dict[str, Any], fresh: dict[str, Any], pairs: list[tuple[int, int]], group: int, *,
                  pad_id: int) -> dict[str, Any]:
    """`batch` with group `old` replaced by group `new` of `fresh` for each (old, new) in `pairs`.

    Both are generation batches as GRPOTrainer builds them; their padded widths may differ, so the
    narrower is padded (prompts on the left, completions on the right) before rows are copied.
    """
    if not pairs:
        return batch
    unknown = sorted(set(batch) - set(_LEFT_PADDED + _RIGHT_PADDED + _PER_ROW + (_TOKEN_COUNT,)))
    if unknown or set(batch) != set(fresh):
        raise RecipeError(f"generation.resample_equal_groups cannot splice this batch (entries {unknown or 'differ'}: "
                          f"images, tools or a TRL other than 1.14.2?); set it to 0")
    out = dict(batch)
    old_rows = torch.cat([torch.arange(o * group, (o + 1) * group) for o, _ in pairs])
    new_rows = torch.cat([torch.arange(n * group, (n + 1) * group) for _, n in pairs])
    for key in _LEFT_PADDED + _RIGHT_PADDED + _PER_ROW:
        if key not in batch:
            continue
        left, right = batch[key], fresh[key]
        if key not in _PER_ROW and left.dim() == 2 and left.shape[1] != right.shape[1]:
            side = "left" if key in _LEFT_PADDED else "right"
            value = pad_id if key.endswith("_ids") else 0
            width = max(left.shape[1], right.shape[1])
            left, right = _pad_to(left, width, side, value), _pad_to(right, width, side, value)
        left = left.clone()
        left[old_rows.to(left.device)] = right[new_rows.to(right.device)].to(left.dtype)
        out[key] = left
    mask = out["completion_mask"]
    out[_TOKEN_COUNT] = mask.sum().to(batch[_TOKEN_COUNT].dtype) if torch.is_tensor(batch[_TOKEN_COUNT]) \
        else int(mask.sum())
    return out


def _pad_to(tensor: torch.Tensor, width: int, side: str, value: float) -> torch.Tensor:
    extra = width - tensor.shape[1]
    if extra <= 0:
        return tensor
    padding = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([padding, tensor] if side == "left" else [tensor, padding], dim=1)
