"""`accelerate launch` with two processes on the CPU: one run folder, one adapter, one W&B run, the
global batch (the launch configs and batch rules without starting processes: tests/unit/test_distributed.py).

`accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 -m grpo_r1.train ...`
starts two processes that train the real SmolLM2 over gloo (accelerate turns the DDP config into
gloo processes where there is no GPU).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from grpo_r1.run.checkpoints import checkpoint_step, latest_checkpoint
from grpo_r1.run.tracking import read_metrics
from tests.helpers import CPU_RECIPE, ROOT
from tests.wandb_files import read_offline_run

CONFIGS = ROOT / "recipes" / "accelerate"
ROWS = 100  # arithmetic problems: an epoch is ROWS x num_generations completions

LENGTH_REWARD = '''
def length_bonus(prompts, completions, **kwargs):
    return [min(len(c[0]["content"]), 200) / 200 for c in completions]
'''


def two_process_command(run_dir: Path, *overrides: str, steps: int = 2) -> list[str]:
    """grpo_r1.train on two processes under accelerate launch with the shipped DDP config."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
            "--num_processes", "2", "--main_process_port", "0", "-m", "grpo_r1.train", str(CPU_RECIPE),
            f"training.max_steps={steps}", "generation.max_completion_length=16", "generation.num_generations=2",
            "training.per_device_train_batch_size=2", f"data.arithmetic_examples={ROWS}", "cold_start.steps=0",
            f"run.output_dir={run_dir}", *overrides]


ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch_two(run_dir: Path, *overrides: str, steps: int = 2, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(two_process_command(run_dir, *overrides, steps=steps), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    (work / "my_rewards.py").write_text(LENGTH_REWARD)
    run_dir = work / "run"
    rewards = f"rewards=[{{name: {work / 'my_rewards.py'}:length_bonus}}, graded_format]"
    proc = launch_two(run_dir, "training.learning_rate=1e-3", "logging.run_name=ddp-run", "logging.tags=[ci, ddp]",
                      rewards)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir, proc


def test_two_processes_train_one_adapter(two_process_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    run_dir, proc = two_process_run
    assert proc.stdout.count("2 processes, DDP; effective batch 4 completions per optimizer step = "
                             "2 per device x 2 processes") == 1
    assert proc.stdout.count("done: 2 steps in") == 1, "only rank 0 reports"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("adapter")) == ["adapter"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m")),
                                      run_dir / "adapter")
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values()), "the adapter learnt nothing"
    assert torch.isfinite(torch.stack([p.abs().max() for p in lora_b.values()])).all()
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()


def test_each_step_logged_once_over_the_global_batch(two_process_run):
    run_dir, _ = two_process_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2], "rank 1 must not write metrics.jsonl"
    # The epoch advances by the global batch (2 per device x 2 processes) per step; one process would make it half.
    assert records[-1]["epoch"] == pytest.approx(2 * 4 / (ROWS * 2))
    for record in records:
        assert isinstance(record["rewards/length_bonus/mean"], float) and "kl" in record
    assert (run_dir / "summary.json").is_file() and (run_dir / "plots" / "rewards.png").is_file()
    assert (run_dir / "recipe.yaml").is_file()


def test_one_wandb_run_from_rank_zero(two_process_run):
    run_dir, _ = two_process_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = read_offline_run(next(runs[0].glob("run-*.wandb")))
    assert run.name == "ddp-run" and run.tags == ["ci", "ddp"]
    assert "train/rewards/length_bonus/mean" in run.history_keys


def test_existing_run_folder_refused_once_without_hanging(two_process_run):
    run_dir, _ = two_process_run
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    proc = launch_two(run_dir, timeout=300)  # a process waiting for the other would run into the timeout
    assert proc.returncode != 0
    assert proc.stderr.count("error: run folder") == 1, proc.stderr[-3000:]
    assert "already holds a run; pass --overwrite" in proc.stderr
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


RESUME_STEPS = 4
RESUME = ("training.save_steps=1", "training.learning_rate=1e-3", "training.steps_per_generation=2", "data.limit=4")


def rank_process(launcher: int, rank: int) -> psutil.Process | None:
    """The training process of `rank` among the launcher's descendants (by its RANK variable)."""
    for child in psutil.Process(launcher).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "grpo_r1.train" in " ".join(child.cmdline()):
                return child
    return None


def test_one_rank_killed_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    """kill -9 of rank 1 in a 2-process run stops the run; `--resume` under the same launch continues from the
    newest complete checkpoint and ends with the adapter and optimizer state of an uninterrupted run, bitwise."""
    from tests.train.test_resume import load_adapter, load_optimizer_state, logged_steps

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    (tmp_path / "my_rewards.py").write_text(LENGTH_REWARD)  # spread in every group: the adapter moves each step
    settings = (*RESUME, f"rewards=[{{name: {tmp_path / 'my_rewards.py'}:length_bonus}}]")
    proc = launch_two(whole, *settings, steps=RESUME_STEPS)
    assert proc.returncode == 0, proc.stderr[-4000:]

    launcher = subprocess.Popen(two_process_command(killed, *settings, steps=RESUME_STEPS), cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not any(step >= 2 for step in logged_steps(killed)):
        assert launcher.poll() is None, launcher.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "step 2 was never logged"
        time.sleep(0.05)
    victim = rank_process(launcher.pid, 1)
    assert victim is not None, "rank 1 not found among the launcher's processes"
    victim.kill()
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode != 0, "the run went on without rank 1"
    newest = latest_checkpoint(killed)
    assert newest is not None and checkpoint_step(newest) in (1, 2), newest

    resumed = launch_two(killed, *settings, "--resume", steps=RESUME_STEPS)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming {killed} from {newest.name}" in resumed.stdout, resumed.stdout[-2000:]
    assert resumed.stdout.count(f"done: {RESUME_STEPS} steps in") == 1
    mine, theirs = load_adapter(killed), load_adapter(whole)
    assert mine.keys() == theirs.keys() and any(t.abs().max() > 0 for n, t in theirs.items() if "lora_B" in n)
    assert [n for n in mine if not torch.equal(mine[n], theirs[n])] == []
    ours = load_optimizer_state(latest_checkpoint(killed))
    ref = load_optimizer_state(latest_checkpoint(whole))
    assert ours.keys() == ref.keys() and all(
        torch.equal(ours[i][slot], tensor) for i, slots in ref.items() for slot, tensor in slots.items())
    steps = {r["step"]: r for r in read_metrics(killed)}
    for record in read_metrics(whole):
        for key in ("reward", "reward_std", "completions/mean_length", "rewards/length_bonus/mean", "loss", "kl"):
            assert steps[record["step"]].get(key) == record.get(key), f"step {record['step']}: {key} differs"
