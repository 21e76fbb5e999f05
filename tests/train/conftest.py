"""The shared training run: one real tiny `python -m grpo_r1.train` on the CPU, for every test that
only inspects what a run leaves behind (tests/train/test_train.py, test_secrets.py, test_completions.py).

It runs the way a user runs it (a subprocess of the command line, W&B offline), with everything
those tests look at switched on: a reward from a file named in the recipe, a 1-step cold start,
a checkpoint every step, completions logged every step, W&B tags, and distinctive fake values in
WANDB_API_KEY, HF_TOKEN and HUGGING_FACE_HUB_TOKEN that must never reach the run folder or the
console. The hub is offline, so the run is hermetic.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import CPU_RECIPE, ROOT

_MARK = uuid.uuid4().hex[:12]
SECRETS = {
    "WANDB_API_KEY": f"wandbfakekey{_MARK}" + "0" * 16,  # W&B keys are 40 characters
    "HF_TOKEN": f"hf_FakeHubToken{_MARK}",
    "HUGGING_FACE_HUB_TOKEN": f"hf_FakeLegacyToken{_MARK}",
}
RUN_NAME = "shared-run"
STEPS = 2
NUM_GENERATIONS = 4  # the CPU recipe's
REWARD_NAMES = ("length_bonus", "graded_format", "lenient_correctness")

# A reward with spread in every group, so the advantages (and so the LoRA update) are non-zero
# whatever the model writes. It also proves a reward loads from a file path named in a recipe.
LENGTH_REWARD = '''
def length_bonus(prompts, completions, **kwargs):
    return [min(len(c[0]["content"]), 200) / 200 for c in completions]
'''


@dataclass
class SharedRun:
    run_dir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> SharedRun:
    work = tmp_path_factory.mktemp("shared_run")
    (work / "my_rewards.py").write_text(LENGTH_REWARD)
    run_dir = work / "run"
    env = {
        **os.environ,
        **SECRETS,
        "WANDB_MODE": "offline",  # the fake key must never be sent anywhere
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    reward_file = work / "my_rewards.py"
    rewards = f"rewards=[{{name: {reward_file}:length_bonus, weight: 1.0}}, graded_format, lenient_correctness]"
    cmd = [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), f"run.output_dir={run_dir}",
           f"training.max_steps={STEPS}", "training.save_steps=1", "training.learning_rate=1e-3",
           "training.per_device_train_batch_size=4", "generation.max_completion_length=32",
           "cold_start.steps=1", "cold_start.batch_size=2",  # its adapter and metrics are there too
           "logging.completions_every=1", f"logging.run_name={RUN_NAME}", "logging.tags=[ci, smoke]", rewards]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SharedRun(run_dir, proc)
