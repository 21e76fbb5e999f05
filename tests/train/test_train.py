"""`python -m grpo_r1.train` end to end on the real SmolLM2 (its refusals of bad input: tests/unit/test_bad_input.py).

The shared training run (tests/train/conftest.py) is inspected: the run folder, the metrics, the
adapter that GRPO moved, W&B's offline files.
"""

from __future__ import annotations

import json
import re

import yaml
from safetensors.torch import load_file

from grpo_r1.recipe import recipe_from_dict
from grpo_r1.run.tracking import read_metrics
from tests.train.conftest import REWARD_NAMES, RUN_NAME, STEPS
from tests.wandb_files import read_offline_run


def test_run_folder_holds_adapter_tokenizer_recipe_and_metrics(shared_run):
    run_dir, proc = shared_run.run_dir, shared_run.proc
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["training"]["max_steps"] == STEPS and resolved["training"]["beta"] > 0
    assert recipe_from_dict(resolved).rewards[1].name == "graded_format"  # the saved recipe is itself valid
    assert f"done: {STEPS} steps in" in proc.stdout


def test_metrics_jsonl_has_a_line_per_step_with_each_reward(shared_run):
    run_dir = shared_run.run_dir
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        for name in REWARD_NAMES:
            assert isinstance(record[f"rewards/{name}/mean"], float)
            assert f"rewards/{name}/std" in record
        assert "kl" in record and "loss" in record
        assert record["timing/generation_s"] > 0 and record["timing/training_s"] > 0
    assert (run_dir / "plots" / "rewards.png").is_file(), "a finished run draws its curves"


def test_grpo_moved_every_lora_matrix_and_the_adapter_loads_back(shared_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    run_dir = shared_run.run_dir
    trained = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    cold = load_file(run_dir / "cold_start" / "adapter" / "adapter_model.safetensors")  # where GRPO began
    lora_b = [name for name in trained if "lora_B" in name]
    assert lora_b and sorted(trained) == sorted(cold), "the adapter has no LoRA weights, or not the cold start's"
    unmoved = [name for name in lora_b if torch.equal(trained[name], cold[name])]
    assert not unmoved, f"{len(unmoved)} of {len(lora_b)} LoRA B matrices did not move during GRPO"
    assert all(torch.isfinite(tensor).all() for tensor in trained.values())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m")),
                                      run_dir / "adapter")
    assert model.peft_config["default"].r == 16


def test_every_reward_reaches_wandb_offline_files(shared_run):
    run_dir = shared_run.run_dir
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    run = read_offline_run(files[0])
    assert run.project == "grpo_r1" and run.name == RUN_NAME and run.tags == ["ci", "smoke"]
    for name in REWARD_NAMES:
        assert f"train/rewards/{name}/mean" in run.history_keys
        assert f"train/rewards/{name}/std" in run.history_keys
    assert "train/kl" in run.history_keys


def test_the_console_shows_one_compact_line_per_step_and_a_summary(shared_run):
    out = shared_run.proc.stdout + "\n" + shared_run.proc.stderr
    lines = [line.strip() for line in out.splitlines() if re.match(r"step \d+/\d+  reward ", line.strip())]
    assert [int(re.match(r"step (\d+)/", line).group(1)) for line in lines] == list(range(1, STEPS + 1))
    assert all("correct " in line and "kl " in line and " s/step  ETA " in line for line in lines[1:]), lines
    assert "{'loss'" not in out and "'rewards/" not in out, "TRL's raw dictionary reached the console"
    summary = next(line for line in shared_run.proc.stdout.splitlines() if line.startswith("grpo_r1: done:"))
    assert re.search(r"reward -?\d+\.\d\d -> -?\d+\.\d\d", summary) and "python -m grpo_r1.evaluate" in summary


def test_the_adapter_card_names_and_locates_the_base_and_no_checkpoint_card_is_written(shared_run):
    run_dir = shared_run.run_dir
    card = (run_dir / "adapter" / "README.md").read_text()
    base_path = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and f"`{base_path}`" in card
    assert f"AutoPeftModelForCausalLM.from_pretrained(\"{run_dir.name}/adapter\")" in card
    assert f"{STEPS} GRPO steps" in card and "[None]" not in card and "More Information Needed" not in card
    assert not (run_dir / "checkpoints" / "README.md").exists(), "TRL's checkpoint card (base '[None]') came back"


def test_the_console_has_no_library_noise(shared_run):
    err = shared_run.proc.stderr
    for noise in ("Use W&B Weave", "URL not available", "Run history:", "clean_up_tokenization_spaces",
                  "supports vLLM"):
        assert noise not in err, f"{noise!r} reached the console:\n{err[-3000:]}"
    summary = next(line for line in shared_run.proc.stdout.splitlines() if line.startswith("grpo_r1: done:"))
    assert f"wandb leet {shared_run.run_dir / 'wandb' / 'latest-run'}" in summary and "wandb sync" in summary
