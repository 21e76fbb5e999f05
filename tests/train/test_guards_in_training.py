"""Learning-signal guards tripped by real tiny trainings of SmolLM2 (the callback on TRL's logs alone:
tests/unit/test_guards.py).

Two CPU trainings: one whose only reward is constant and whose completions are 4 tokens long
(equal rewards, truncation: warn; constant reward: stop), one whose learning rate of 1e30
makes the second step's loss NaN (nonfinite: stop, that update skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_r1.run.tracking import read_metrics
from grpo_r1.trainer.guards import read_guard_events
from tests.helpers import CPU_RECIPE, ROOT

TINY = ["generation.num_generations=2", "training.per_device_train_batch_size=2", "logging.report_to=none",
        "data.arithmetic_examples=50", "cold_start.steps=0"]

REWARDS = '''
def constant_half(prompts, completions, **kwargs):
    return [0.5 for _ in completions]


def alternate(prompts, completions, **kwargs):
    return [float(i % 2) for i in range(len(completions))]
'''


def _train(tmp: Path, name: str, overrides: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    (tmp / "guard_rewards.py").write_text(REWARDS)
    run_dir = tmp / name
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, f"run.output_dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    return run_dir, proc


@pytest.fixture(scope="module")
def constant_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    return _train(tmp, "constant", [
        f"rewards=[{tmp / 'guard_rewards.py'}:constant_half]", "generation.max_completion_length=4",
        "training.max_steps=4", "guards.patience=2", "guards.constant_reward=stop",
    ])


def test_constant_reward_stops_the_run_and_keeps_the_adapter(constant_run):
    run_dir, proc = constant_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped at step 2 by guards.constant_reward=stop: "), last
    assert "reward 'constant_half' paid every completion the same value (0.5) for 2 steps (steps 1-2)" in last
    assert "it gives GRPO no signal" in last and f"the adapter so far is in {run_dir / 'adapter'}" in last
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2], "training ended at the stop, not at max_steps=4"


def test_four_token_completions_warn_of_truncation_and_equal_rewards(constant_run):
    run_dir, proc = constant_run
    events = {e["guard"]: e for e in read_guard_events(run_dir)}
    assert sorted(events) == ["constant_reward", "equal_rewards", "truncation"]
    truncation = events["truncation"]
    assert truncation["action"] == "warn" and truncation["step"] == 2
    assert truncation["message"].startswith("every completion hit generation.max_completion_length=4 for 2 steps")
    assert "raise generation.max_completion_length" in truncation["message"]
    assert events["equal_rewards"]["message"].startswith("100% of groups had all-equal rewards for 2 steps")
    assert "graded_format, lenient_correctness" in events["equal_rewards"]["message"]
    assert events["constant_reward"]["action"] == "stop"
    printed = [line for line in proc.stderr.splitlines() if line.startswith("grpo_r1: guard")]
    assert any(line.startswith("grpo_r1: guard warning (guards.truncation=warn) at step 2: every completion")
               for line in printed), printed
    assert all(record["completions/clipped_ratio"] == 1.0 for record in read_metrics(run_dir))


def test_nan_loss_skips_the_update_and_stops(tmp_path):
    # A learning rate of 1e30 sends the LoRA weights to ~1e30 at step 1; step 2 reuses step 1's
    # completions (num_iterations=2), so its forward pass overflows: a NaN loss and NaN gradients.
    run_dir, proc = _train(tmp_path, "nan", [
        f"rewards=[{tmp_path / 'guard_rewards.py'}:alternate]", "generation.max_completion_length=8",
        "training.max_steps=3", "training.learning_rate=1e30", "training.num_iterations=2",
    ])
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped at step 2 by guards.nonfinite=stop: "
                           "the gradient at step 2 is not finite")
    assert "that update was skipped and the adapter keeps step 1's weights" in last
    assert "lower training.learning_rate (now 1e+30)" in last
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values()), "the NaN update reached the adapter"
    assert any(w.abs().max() > 1e20 for w in weights.values()), "step 1's (huge) update is kept"
