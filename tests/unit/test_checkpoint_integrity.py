"""Checkpoints record each file's size and hash and the process count that saved them; a resume
skips a damaged checkpoint for the one before it (warning with the damaged file, moving it aside)
and refuses another process count. (A real killed run resumed: tests/train/test_resume.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import load_recipe
from grpo_r1.run.checkpoints import COMPLETE_FILE, damaged_files, is_complete, latest_checkpoint, mark_complete
from grpo_r1.run.resume import plan_resume, rewind_run_folder
from tests.helpers import CPU_RECIPE

OVERRIDES = ["training.max_steps=6"]


def make_run(tmp_path: Path, steps=(2, 4), processes: int = 1) -> Path:
    """A run folder as training leaves it: recipe.yaml, metrics and complete checkpoints (small stand-in files)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = yaml.safe_dump(load_recipe(CPU_RECIPE, OVERRIDES).to_dict())
    (run_dir / "recipe.yaml").write_text(recipe)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, max(steps) + 1)))
    for step in steps:
        folder = run_dir / "checkpoints" / f"checkpoint-{step}"
        (folder / "ref").mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (40 + step))
        (folder / "ref" / "adapter_model.safetensors").write_bytes(b"r" * 999)
        (folder / "optimizer.pt").write_bytes(b"o" * 5000 + bytes([step]))
        (folder / "recipe.yaml").write_text(recipe)
        mark_complete(folder, global_step=step, grpo_micro_step=step, run_name="run", processes=processes)
    return run_dir


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))


def test_complete_json_records_size_hash_and_process_count(tmp_path):
    run_dir = make_run(tmp_path, processes=2)
    marker = json.loads((run_dir / "checkpoints" / "checkpoint-4" / COMPLETE_FILE).read_text())
    assert marker["processes"] == 2 and set(marker["files"]) == {
        "adapter_model.safetensors", "ref/adapter_model.safetensors", "optimizer.pt", "recipe.yaml"}
    entry = marker["files"]["optimizer.pt"]
    assert entry["size"] == 5001 and len(entry["blake2b"]) == 128


def test_a_changed_byte_is_found_and_the_resume_falls_back_with_a_warning(tmp_path, caplog):
    run_dir = make_run(tmp_path)
    newest = run_dir / "checkpoints" / "checkpoint-4"
    flip_a_byte(newest / "ref" / "adapter_model.safetensors")
    assert is_complete(newest), "the size alone cannot see it"
    assert damaged_files(newest) == ["ref/adapter_model.safetensors"]
    with caplog.at_level(logging.WARNING):
        plan = plan_resume(load_recipe(CPU_RECIPE, OVERRIDES), run_dir, "smollm2_gsm8k_cpu")
    assert plan.checkpoint == run_dir / "checkpoints" / "checkpoint-2" and plan.step == 2
    assert ("checkpoint-4 is damaged (ref/adapter_model.safetensors: no longer what was saved" in caplog.text
            and "resuming from checkpoint-2 instead" in caplog.text and "damaged-checkpoint-4" in caplog.text)
    rewind_run_folder(plan)
    assert (run_dir / "checkpoints" / "damaged-checkpoint-4" / "optimizer.pt").is_file()  # kept, for a look
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "checkpoint-2"
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_truncated_file_makes_the_checkpoint_incomplete(tmp_path):
    run_dir = make_run(tmp_path)
    with open(run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors", "r+b") as f:
        f.truncate(100)
    plan = plan_resume(load_recipe(CPU_RECIPE, OVERRIDES), run_dir, "smollm2_gsm8k_cpu")
    assert plan.step == 2 and plan.damaged == []  # incomplete, as a save cut short: never a candidate


def test_every_checkpoint_damaged_is_refused_naming_the_files(tmp_path):
    run_dir = make_run(tmp_path)
    for step in (2, 4):
        flip_a_byte(run_dir / "checkpoints" / f"checkpoint-{step}" / "optimizer.pt")
    with pytest.raises(RecipeError) as info:
        plan_resume(load_recipe(CPU_RECIPE, OVERRIDES), run_dir, "smollm2_gsm8k_cpu")
    message = str(info.value)
    assert "every complete checkpoint" in message
    assert "checkpoint-4: optimizer.pt; checkpoint-2: optimizer.pt" in message
    assert "--overwrite" in message


def test_another_process_count_is_refused_naming_both(tmp_path):
    run_dir = make_run(tmp_path, processes=2)
    recipe = load_recipe(CPU_RECIPE, OVERRIDES)
    with pytest.raises(RecipeError) as info:
        plan_resume(recipe, run_dir, "smollm2_gsm8k_cpu", processes=1)
    message = str(info.value)
    assert "checkpoint-4" in message and "saved by 2 process(es) and this launch has 1" in message
    assert "accelerate launch --num_processes 2" in message
    assert plan_resume(recipe, run_dir, "smollm2_gsm8k_cpu", processes=2).step == 4


def test_checkpoints_from_before_hashes_resume_as_before(tmp_path):
    run_dir = make_run(tmp_path)
    newest = run_dir / "checkpoints" / "checkpoint-4"
    marker = json.loads((newest / COMPLETE_FILE).read_text())
    marker["files"] = {name: entry["size"] for name, entry in marker["files"].items()}  # the old format
    del marker["processes"]
    (newest / COMPLETE_FILE).write_text(json.dumps(marker))
    assert is_complete(newest) and damaged_files(newest) == []
    assert plan_resume(load_recipe(CPU_RECIPE, OVERRIDES), run_dir, "smollm2_gsm8k_cpu", processes=2).step == 4
