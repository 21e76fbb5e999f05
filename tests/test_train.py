"""`python -m grpo_r1.train` end to end on the real SmolLM2 model (its refusals of bad input: test_bad_input.py).

One real training run (2 steps, CPU) is shared by the tests that inspect its results.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpo_r1.recipe import recipe_from_dict
from grpo_r1.tracking import read_metrics
from tests.wandb_files import read_offline_run

ROOT = Path(__file__).parent.parent
CPU_RECIPE = ROOT / "recipes" / "smollm2_gsm8k_cpu.yaml"

# A reward with spread in every group, so the advantages (and so the LoRA update) are non-zero
# whatever the model writes. It also proves a reward loads from a file path named in a recipe.
LENGTH_REWARD = '''
def length_bonus(prompts, completions, **kwargs):
    return [min(len(c[0]["content"]), 200) / 200 for c in completions]
'''


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    (work / "my_rewards.py").write_text(LENGTH_REWARD)
    run_dir = work / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    rewards = f"rewards=[{{name: {work / 'my_rewards.py'}:length_bonus, weight: 1.0}}, graded_format, lenient_correctness]"
    # No cold start: the LoRA check below needs every lora_B still at PEFT's zero when GRPO begins.
    cmd = [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), "training.max_steps=2", "training.learning_rate=1e-3",
           "training.per_device_train_batch_size=4", "cold_start.steps=0",
           "generation.max_completion_length=32", f"run.output_dir={run_dir}", "logging.run_name=test-run",
           "logging.tags=[ci, smoke]", rewards]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


pytestmark = pytest.mark.slow


def test_run_folder_holds_adapter_tokenizer_recipe_and_metrics(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["training"]["max_steps"] == 2 and resolved["training"]["beta"] > 0
    assert recipe_from_dict(resolved).rewards[1].name == "graded_format"  # the saved recipe is itself valid
    assert "2 steps done" in proc.stdout


def test_metrics_jsonl_has_a_line_per_step_with_each_reward(trained_run):
    run_dir, _ = trained_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for name in ("length_bonus", "graded_format", "lenient_correctness"):
            assert isinstance(record[f"rewards/{name}/mean"], float)
            assert f"rewards/{name}/std" in record
        assert "kl" in record and "loss" in record
        assert record["timing/generation_s"] > 0 and record["timing/training_s"] > 0
    assert (run_dir / "plots" / "rewards.png").is_file(), "a finished run draws its curves"


def test_lora_weights_changed_and_adapter_loads_back(trained_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    run_dir, _ = trained_run
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b, "the adapter has no LoRA weights"
    # PEFT starts every lora_B at zero: any non-zero value was learnt.
    changed = [n for n, p in lora_b.items() if p.abs().max() > 0]
    assert len(changed) == len(lora_b), f"{len(lora_b) - len(changed)} LoRA matrices never moved"
    assert model.peft_config["default"].r == 16
    assert torch.isfinite(torch.stack([p.abs().max() for p in lora_b.values()])).all()


def test_every_reward_reaches_wandb_offline_files(trained_run):
    run_dir, _ = trained_run
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run = read_offline_run(files[0])
    assert run.project == "grpo_r1" and run.name == "test-run" and run.tags == ["ci", "smoke"]
    for name in ("length_bonus", "graded_format", "lenient_correctness"):
        assert f"train/rewards/{name}/mean" in run.history_keys
        assert f"train/rewards/{name}/std" in run.history_keys
    assert "train/kl" in run.history_keys
