"""Dynamic sampling (generation.resample_equal_groups) in a real tiny CPU training: groups whose rewards
are all equal are replaced by groups of other questions that carry a signal, and the update then moves the
adapter; the splice itself on hand-made batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from grpo_r1.data import load_questions
from grpo_r1.recipe import load_recipe
from grpo_r1.run.tracking import read_metrics
from grpo_r1.trainer.control import grpo_question_order
from grpo_r1.trainer.dynamic_sampling import equal_groups, splice_groups
from grpo_r1.trainer.grpo_config import grpo_config
from tests.helpers import CPU_RECIPE, ROOT

# Spread only for questions with an odd answer: every group of an even-answer question scores all 0.
PICKY = '''
import zlib

def odd_only(prompts, completions, answer, **kwargs):
    return [(zlib.crc32(c[0]["content"].encode()) % 97) / 97 if int(a) % 2 == 1 else 0.0
            for c, a in zip(completions, answer)]
'''
STEPS = 3


def test_equal_groups_are_replaced_by_groups_with_a_signal_and_the_adapter_learns_from_them(tmp_path):
    (tmp_path / "picky.py").write_text(PICKY)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), f"run.output_dir={run_dir}",
           f"training.max_steps={STEPS}", "training.per_device_train_batch_size=4", "cold_start.steps=0",
           "generation.max_completion_length=12", "generation.resample_equal_groups=4", "logging.report_to=none",
           "training.beta=0", "training.save_steps=100", f"rewards=[{tmp_path / 'picky.py'}:odd_only]"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(run_dir)
    assert len(steps) == STEPS
    # Which of GRPO's own questions (TRL's sampler: one a step) had an even answer, so an all-equal group.
    recipe = load_recipe(run_dir / "recipe.yaml")
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    args = grpo_config(recipe, tmp_path / "unused", "x", torch.float32, cpu=True)
    even = [int(dataset[rows[0]]["answer"]) % 2 == 0 for rows in grpo_question_order(recipe, len(dataset), args, STEPS)]
    assert any(even), "the seed gives no even-answer question in these steps: the test would show nothing"
    for was_equal, record in zip(even, steps, strict=True):
        if was_equal:
            assert record["resample/rounds"] >= 1
        assert record["resample/replaced"] == (1 if was_equal and record["resample/equal_left"] == 0 else 0)
        if record["resample/equal_left"] == 0:  # a group with spread was trained on: with beta 0 only it moves
            assert record["grad_norm"] > 0
        else:
            assert record["grad_norm"] == 0


def _batch(prompt_width: int, completion_width: int, advantages: list[float], start: int) -> dict:
    rows = len(advantages)
    ids = torch.arange(start, start + rows).unsqueeze(1)
    return {
        "prompt_ids": ids.repeat(1, prompt_width), "prompt_mask": torch.ones(rows, prompt_width, dtype=torch.long),
        "completion_ids": ids.repeat(1, completion_width) + 100,
        "completion_mask": torch.ones(rows, completion_width, dtype=torch.long),
        "ref_per_token_logps": torch.full((rows, completion_width), -1.0),
        "advantages": torch.tensor(advantages), "num_items_in_batch": torch.tensor(float(rows * completion_width)),
    }


def test_splice_pads_each_side_as_trl_does_and_recounts_the_tokens():
    batch = _batch(3, 2, [0.0, 0.0, 1.0, -1.0], start=0)  # group 0 equal, group 1 not
    fresh = _batch(5, 4, [0.5, -0.5, 0.0, 0.0], start=10)  # group 0 has spread
    out = splice_groups(batch, fresh, [(0, 0)], 2, pad_id=-7)
    assert out["prompt_ids"].tolist()[0] == [10] * 5 and out["prompt_ids"].tolist()[2] == [-7, -7, 2, 2, 2]
    assert out["prompt_mask"].tolist()[2] == [0, 0, 1, 1, 1]  # prompts padded on the left
    assert out["completion_ids"].tolist()[3] == [103, 103, -7, -7]  # completions on the right
    assert out["completion_mask"].tolist()[3] == [1, 1, 0, 0]
    assert out["advantages"].tolist() == [0.5, -0.5, 1.0, -1.0]
    assert out["num_items_in_batch"].item() == 2 * 4 + 2 * 2
    assert batch["advantages"].tolist() == [0.0, 0.0, 1.0, -1.0]  # the inputs are left as they were


def test_equal_groups_are_read_from_the_weighted_rewards_not_from_rounded_advantages():
    weights = torch.tensor([1.0, 0.5])
    rewards = torch.tensor([
        [0.999, 0.0], [0.999, 0.0], [0.999, 0.0], [0.999, 0.0], [0.999, 0.0],  # alike (mean 0.999 rounds in float32)
        [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0],  # 1.0 each, the last by the second function
        [1.0, float("nan")], [0.0, float("nan")], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0],  # spread
        [float("nan")] * 2, [float("nan")] * 2, [float("nan")] * 2, [float("nan")] * 2, [float("nan")] * 2,  # unscored
    ])
    assert equal_groups(rewards, weights, 5) == [0, 1, 3]


def test_splice_refuses_entries_it_does_not_know():
    batch = _batch(1, 1, [0.0, 0.0], start=0)
    batch["pixel_values"] = torch.zeros(2, 3)
    with pytest.raises(Exception, match="resample_equal_groups cannot splice.*pixel_values"):
        splice_groups(batch, dict(batch), [(0, 0)], 2, pad_id=0)
