"""Bad input that shows only once training has begun, through the real command line (the refusals
before it: tests/unit/test_bad_input.py): the run folder of a run that never completed a step goes
again, and a disk that fills while a checkpoint is saved keeps the earlier one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CPU_RECIPE, ROOT
from tests.unit.test_bad_input import TINY

# ----------------------------------------------------------------------------- failures once training has begun

# Passes the check on sample completions (they carry no token ids) and raises on the model's first real ones.
PICKY_REWARD = '''
def picky(prompts, completions, completion_ids, **kwargs):
    if any(completion_ids):
        raise RuntimeError("cannot score a sampled completion")
    return [0.0 for _ in completions]
'''


@pytest.mark.parametrize("folder_existed", [False, True], ids=["new-folder", "existing-empty-folder"])
def test_a_run_failing_in_its_first_step_leaves_the_folder_as_it_found_it(tmp_path, folder_existed):
    """The reward passes the check on sample completions and raises on the model's first ones, after
    the run folder, its recipe.yaml and W&B's files were made: they go again."""
    (tmp_path / "picky.py").write_text(PICKY_REWARD)
    run_dir = tmp_path / "run"
    if folder_existed:
        run_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, "logging.report_to=wandb",
         f"run.output_dir={run_dir}", f"rewards=[{tmp_path / 'picky.py'}:picky]"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    # Training had begun, so W&B's lines and the progress bar come first; the error is the last line, whole.
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: reward 'picky' raised RuntimeError: cannot score a sampled completion"), proc.stderr
    if folder_existed:
        assert run_dir.is_dir() and list(run_dir.iterdir()) == [], "a folder that was there stays, as empty as it was"
    else:
        assert not run_dir.exists(), "the folder of a run that never completed a step is removed"


# Passes the check on sample completions and never returns on the model's first real ones.
STALLING_REWARD = '''
import time

def stalls(prompts, completions, completion_ids, **kwargs):
    if any(completion_ids):
        time.sleep(3600)  # a service that stopped answering
    return [0.0 for _ in completions]
'''


def test_a_reward_that_hangs_in_training_stops_the_run_with_its_name_and_step(tmp_path):
    (tmp_path / "stalls.py").write_text(STALLING_REWARD)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, f"run.output_dir={run_dir}",
         f"rewards=[graded_format, {{name: {tmp_path / 'stalls.py'}:stalls, timeout_s: 2}}]"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: reward 'stalls' did not return within 2 s at step 1; the first of its 2 "
                           "completions: "), proc.stderr[-3000:]
    assert "rewards.1.timeout_s=120" in last and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 540, "the abandoned call kept the process alive"


# Runs the real command line with a disk that fills up while checkpoint-2 is written (its optimizer
# state, the largest file), and records what checkpoint-1 held at that moment.
FULL_DISK_DRIVER = '''
import errno, hashlib, json, os, sys
from pathlib import Path

from transformers import Trainer

from grpo_r1.train import main

save_optimizer = Trainer._save_optimizer_and_scheduler


def fills_the_disk_at_step_2(self, output_dir):
    if Path(output_dir).name != "checkpoint-2":
        return save_optimizer(self, output_dir)
    earlier = Path(output_dir).parent / "checkpoint-1"
    files = {p.relative_to(earlier).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(earlier.rglob("*")) if p.is_file()}
    Path(sys.argv[1]).write_text(json.dumps(files))
    partial = Path(output_dir) / "optimizer.pt"
    partial.write_bytes(b"\\0" * 1024)  # what a write cut short leaves
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))


Trainer._save_optimizer_and_scheduler = fills_the_disk_at_step_2
sys.exit(main(sys.argv[2:]))
'''


def test_disk_full_when_saving_keeps_the_earlier_checkpoint(tmp_path):
    """One line that names the folder and the fix; checkpoint-1, saved before, is untouched and still complete."""
    import hashlib

    from grpo_r1.run.checkpoints import is_complete

    driver, record, run_dir = tmp_path / "driver.py", tmp_path / "checkpoint-1.json", tmp_path / "run"
    driver.write_text(FULL_DISK_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), str(record), str(CPU_RECIPE), *TINY, "training.max_steps=2",
         "training.save_steps=1", f"run.output_dir={run_dir}"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: ") and "is full" in last, proc.stderr
    for text in (str(run_dir), "checkpoint-2", "free space", "run.output_dir", "checkpoint-1", "--resume"):
        assert text in last, f"the error does not name {text!r}: {last}"
    earlier = json.loads(record.read_text())
    checkpoint_1 = run_dir / "checkpoints" / "checkpoint-1"
    now = {p.relative_to(checkpoint_1).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(checkpoint_1.rglob("*")) if p.is_file()}
    assert earlier and now == earlier, "checkpoint-1 changed after the disk filled"
    assert is_complete(checkpoint_1) and not is_complete(run_dir / "checkpoints" / "checkpoint-2")
    assert (run_dir / "metrics.jsonl").is_file(), "the run's metrics so far are kept"


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int):
    """A real filesystem of `megabytes` MiB at `path` (a tmpfs): skipped where this machine refuses to mount one."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip()}): the real full disk is "
                    "shown where the tests run as root with mounting allowed; the injected one above runs everywhere")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, megabytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(path)], check=True)


def used_mb(path: Path) -> float:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize / 2**20


def test_a_real_full_disk_mid_save_keeps_the_earlier_checkpoint_and_resumes_once_freed(tmp_path):
    from grpo_r1.run.checkpoints import damaged_files, is_complete

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, "training.save_steps=1",
                               f"run.output_dir={run_dir}", *extra],
                              cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)

    with small_disk(tmp_path / "disk", 1024) as disk:
        run_dir = disk / "run"
        first = train("training.max_steps=1")
        assert first.returncode == 0, first.stderr[-3000:]
        checkpoint_1 = run_dir / "checkpoints" / "checkpoint-1"
        checkpoint_mb = sum(p.stat().st_size for p in checkpoint_1.rglob("*") if p.is_file()) / 2**20
        resize(disk, int(used_mb(disk) + checkpoint_mb / 2) + 1)  # room for half of the next checkpoint
        full = train("training.max_steps=3", "--resume")
        assert full.returncode == 2, full.stderr[-3000:]
        last = full.stderr.rstrip().splitlines()[-1]
        assert last.startswith("error: ") and "is full" in last and str(run_dir) in last, full.stderr[-3000:]
        assert "checkpoint-2" in last and "free space" in last and "--resume" in last, last
        assert is_complete(checkpoint_1) and damaged_files(checkpoint_1) == [], "checkpoint-1 was harmed"
        resize(disk, 1024)  # space freed
        resumed = train("training.max_steps=3", "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "from checkpoint-1" in resumed.stdout and "done: 3 steps in" in resumed.stdout
