"""Checkpoint and resume on the real SmolLM2 CPU model: a run killed with SIGKILL at a random step
and resumed ends where an uninterrupted run ends; Ctrl-C saves a checkpoint and prints a resume
command that works; --resume refuses what it cannot continue.

The tiny run (4 steps) is set up so that every piece of resume state matters:
- steps_per_generation=2: completions are generated at steps 1 and 3 and trained on again at
  steps 2 and 4, so a checkpoint at an odd step holds completions still to be trained on;
- data.limit=3 with 2 questions a round: one round per epoch, so steps 3-4 are a second epoch
  with its own shuffle (a resumed run must not restart the shuffle at the first epoch's order);
- save_steps=1: a checkpoint every step; save_total_limit=2 (the default) keeps two.
- a reward with spread (the completion's length) and a learning rate high enough that the
  adapter and optimizer state move at every step.

On a CPU with one thread the continued run is bitwise identical to the uninterrupted one (RNG
states, adapter and optimizer are restored exactly, and generation, rewards and the update are
deterministic), so tensors are compared with a tolerance of 0 (`torch.equal`).
"""

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo_r1 import train as train_module
from grpo_r1.recipe import load_recipe
from grpo_r1.run.checkpoints import COMPLETE_FILE, checkpoint_step, latest_checkpoint
from grpo_r1.run.resume import plan_resume
from grpo_r1.run.tracking import METRICS_FILE, SUMMARY_FILE, WANDB_ID_FILE, read_metrics
from tests.helpers import CPU_RECIPE, ROOT
from tests.wandb_files import read_offline_run

STEPS = 4

LENGTH_REWARD = '''
def length_bonus(prompts, completions, **kwargs):
    return [min(len(c[0]["content"]), 200) / 200 for c in completions]
'''


def tiny_overrides(work: Path) -> list[str]:
    return [f"training.max_steps={STEPS}", "training.save_steps=1", "training.learning_rate=1e-3",
            "training.per_device_train_batch_size=2", "training.steps_per_generation=2",
            "generation.num_generations=2", "generation.max_completion_length=16", "data.limit=3", "cold_start.steps=0",
            f"rewards=[{{name: {work / 'my_rewards.py'}:length_bonus}}]"]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def start(args: list[str]) -> subprocess.Popen:
    # A session of its own: signals go to the whole process group, as Ctrl-C in a terminal does.
    return subprocess.Popen([sys.executable, "-m", "grpo_r1.train", *args], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "grpo_r1.train", *args], cwd=ROOT, env=env(), text=True,
                          capture_output=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def logged_steps(run_dir: Path) -> list[int]:
    """The steps in metrics.jsonl so far (a line being written is skipped)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return steps


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def logged_wandb_steps(run) -> list[int]:
    """The global steps of the training logs (rows with a loss) in an offline W&B run file."""
    return [row["train/global_step"] for row in run.history if "train/loss" in row]


def load_adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def load_optimizer_state(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]


def assert_same_training(run_dir: Path, reference: Path) -> None:
    """Final step, adapter tensors and Adam state of `run_dir` equal those of `reference`."""
    import torch

    final = latest_checkpoint(run_dir)
    assert checkpoint_step(final) == STEPS
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == STEPS
    mine, theirs = load_adapter(run_dir), load_adapter(reference)
    assert mine.keys() == theirs.keys() and mine
    assert any(t.abs().max() > 0 for n, t in theirs.items() if "lora_B" in n), "the adapter never moved: no test"
    differing = [n for n in mine if not torch.equal(mine[n], theirs[n])]
    assert not differing, f"{len(differing)} adapter tensors differ, e.g. {differing[:3]}"
    ours, ref = load_optimizer_state(final), load_optimizer_state(latest_checkpoint(reference))
    assert ours.keys() == ref.keys() and ours
    for index, slots in ref.items():
        assert set(slots) >= {"exp_avg", "exp_avg_sq", "step"}
        for slot, tensor in slots.items():
            assert torch.equal(ours[index][slot], tensor), f"optimizer state {index}/{slot} differs"


def assert_same_questions(run_dir: Path, reference: Path) -> None:
    """Each step saw the same completions and rewards as the uninterrupted run."""
    keys = ("reward", "reward_std", "completions/mean_length", "rewards/length_bonus/mean", "loss", "kl")
    ours = {r["step"]: r for r in read_metrics(run_dir)}
    for record in read_metrics(reference):
        for key in keys:
            assert ours[record["step"]].get(key) == record.get(key), f"step {record['step']}: {key} differs"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("resume")
    (work / "my_rewards.py").write_text(LENGTH_REWARD)
    return work


@pytest.fixture(scope="module")
def uninterrupted(work) -> Path:
    run_dir = work / "uninterrupted"
    run([str(CPU_RECIPE), *tiny_overrides(work), f"run.output_dir={run_dir}"])
    return run_dir


@pytest.fixture(scope="module")
def killed_and_resumed(work, uninterrupted):
    """Kill a run with SIGKILL right after it logs a random step >= 2 (its checkpoint is being
    written then, so it may be left half-written), then resume it."""
    run_dir = work / "killed"
    args = [str(CPU_RECIPE), *tiny_overrides(work), f"run.output_dir={run_dir}"]
    kill_after = int(os.environ.get("GRPO_R1_TEST_KILL_STEP") or random.randint(2, STEPS - 1))
    print(f"SIGKILL once step {kill_after} is logged (GRPO_R1_TEST_KILL_STEP={kill_after} repeats it)")
    proc = start(args)
    wait_for(proc, lambda: kill_after in logged_steps(run_dir), f"step {kill_after} was logged")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = {"metrics": (run_dir / METRICS_FILE).read_text().splitlines(),
              "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")),
              "complete": latest_checkpoint(run_dir)}
    print(f"after the kill: {before['checkpoints']}, newest complete {before['complete'].name}")
    resumed = run([*args, "--resume"])
    return run_dir, before, resumed





def test_killed_run_resumes_to_the_uninterrupted_adapter_and_optimizer(killed_and_resumed, uninterrupted):
    run_dir, before, resumed = killed_and_resumed
    assert f"resuming {run_dir} from {before['complete'].name}" in resumed.stdout
    assert f"done: {STEPS} steps in" in resumed.stdout
    assert_same_training(run_dir, uninterrupted)
    assert_same_questions(run_dir, uninterrupted)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["checkpoint-3", "checkpoint-4"], "save_total_limit=2 keeps the newest two"


def test_summary_says_which_steps_the_resumed_part_ran(killed_and_resumed, uninterrupted):
    run_dir, before, _ = killed_and_resumed
    resumed_from = checkpoint_step(before["complete"])
    whole = json.loads((uninterrupted / SUMMARY_FILE).read_text())
    part = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert whole["first_step"] == 0 and part["first_step"] == resumed_from and part["step"] == whole["step"] == STEPS
    # Throughput over the steps this part ran (transformers divides the whole run's steps by its time).
    assert part["train_steps_per_second"] == pytest.approx((STEPS - resumed_from) / part["train_runtime"], abs=2e-3)
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert part["train_loss"] == pytest.approx(sum(losses) / len(losses))


def test_metrics_have_every_step_once_and_keep_the_lines_before_the_checkpoint(killed_and_resumed):
    run_dir, before, _ = killed_and_resumed
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, STEPS + 1))
    resumed_from = checkpoint_step(before["complete"])
    # The steps up to the checkpoint were not trained again: their lines (with their step
    # timings) are the killed run's own.
    assert (run_dir / METRICS_FILE).read_text().splitlines()[:resumed_from] == before["metrics"][:resumed_from]


def wandb_parts(run_dir: Path) -> list:
    """The run's offline W&B files, oldest first; all must belong to the run id kept in the folder."""
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert folders and all(f.name.endswith(f"-{run_id}") for f in folders), (run_id, folders)
    return [read_offline_run(folder / f"run-{run_id}.wandb") for folder in folders]


def test_wandb_continues_the_same_run(killed_and_resumed):
    run_dir, before, _ = killed_and_resumed
    parts = wandb_parts(run_dir)
    assert len(parts) == 2, "the resumed part is a second offline folder of the same run id"
    # SIGKILL also killed W&B's writer, so the first file may lack its last records; the resumed
    # part keeps the run's own name (not the folder's) and logs exactly the steps trained again.
    resumed = parts[1]
    assert re.fullmatch(r"smollm2_gsm8k_cpu-\d{8}-\d{6}", resumed.name) and resumed.project == "grpo_r1"
    resumed_from = checkpoint_step(before["complete"])
    assert logged_wandb_steps(resumed) == list(range(resumed_from + 1, STEPS + 1))


def test_ctrl_c_saves_a_checkpoint_and_prints_a_resume_command_that_works(work, uninterrupted):
    run_dir = work / "ctrl-c"
    proc = start([str(CPU_RECIPE), *tiny_overrides(work), f"run.output_dir={run_dir}"])
    wait_for(proc, lambda: 1 in logged_steps(run_dir), "step 1 was logged")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    stopped_at = logged_steps(run_dir)[-1]
    assert stopped_at < STEPS
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint_step(checkpoint) == stopped_at, (
        "the checkpoint is of the step it stopped at")
    assert not (run_dir / "adapter").exists(), "an interrupted run has no final adapter"
    assert "Ctrl-C: finishing this step, then saving a checkpoint" in err
    assert "Resume with:" in err, err[-2000:]
    command = shlex.split(err.split("Resume with:")[1].strip().splitlines()[0])
    assert command[:3] == ["python", "-m", "grpo_r1.train"] and command[-2:] == ["--resume", str(run_dir)]
    resumed = run(command[3:])
    assert f"resuming {run_dir} from checkpoint-{stopped_at}" in resumed.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, STEPS + 1))
    assert_same_training(run_dir, uninterrupted)
    first, second = wandb_parts(run_dir)  # W&B shut down cleanly here: one run, its steps once each
    assert second.name == first.name and second.tags == first.tags
    assert logged_wandb_steps(first) + logged_wandb_steps(second) == list(range(1, STEPS + 1))


def test_a_half_written_checkpoint_is_never_resumed(killed_and_resumed, tmp_path):
    run_dir, _, _ = killed_and_resumed
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    newest = copy / "checkpoints" / "checkpoint-4"
    assert latest_checkpoint(copy) == newest
    with open(newest / "optimizer.pt", "r+b") as f:  # a save cut short
        f.truncate(1000)
    assert latest_checkpoint(copy) == copy / "checkpoints" / "checkpoint-3"
    (copy / "checkpoints" / "checkpoint-3" / COMPLETE_FILE).unlink()  # a save that never finished
    assert latest_checkpoint(copy) is None


def test_a_damaged_checkpoint_is_skipped_for_the_one_before_it(killed_and_resumed, uninterrupted, work, tmp_path):
    run_dir, _, _ = killed_and_resumed
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    optimizer = copy / "checkpoints" / "checkpoint-4" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot: same size, another hash
    optimizer.write_bytes(bytes(data))
    resumed = run([str(CPU_RECIPE), *tiny_overrides(work), f"run.output_dir={copy}", "--resume"])
    assert "checkpoint-4 is damaged (optimizer.pt: no longer what was saved" in resumed.stderr, resumed.stderr[-2000:]
    assert f"resuming {copy} from checkpoint-3" in resumed.stdout
    assert (copy / "checkpoints" / "damaged-checkpoint-4" / "optimizer.pt").is_file()
    assert_same_training(copy, uninterrupted)  # step 4 trained again, to the same adapter and optimizer


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded for a resume that should have been refused")


def test_resume_refuses_a_recipe_that_makes_another_experiment(killed_and_resumed, work, monkeypatch, capsys):
    run_dir, _, _ = killed_and_resumed
    monkeypatch.setattr("grpo_r1.training.load_model", no_model)
    before = sorted(p.name for p in run_dir.rglob("*"))
    changed = ["lora.r=8", "generation.max_completion_length=24", "run.seed=7", "training.max_steps=6"]
    code = train_module.main([str(CPU_RECIPE), *tiny_overrides(work), *changed, f"run.output_dir={run_dir}",
                              "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --resume: the recipe differs") and len(err.strip().splitlines()) == 1
    for key in ("lora.r (16 -> 8)", "generation.max_completion_length (16 -> 24)", "run.seed (42 -> 7)"):
        assert key in err
    assert "training.max_steps" not in err, "raising max_steps is allowed"
    assert sorted(p.name for p in run_dir.rglob("*")) == before, "a refused resume changes nothing"
    # Longer, and logged differently: the same experiment.
    recipe = load_recipe(CPU_RECIPE, [*tiny_overrides(work), "training.max_steps=6", "logging.tags=[more]",
                                      "training.save_steps=2"])
    plan = plan_resume(recipe, run_dir, "smollm2_gsm8k_cpu")
    assert plan.step == STEPS and plan.checkpoint == run_dir / "checkpoints" / f"checkpoint-{STEPS}"
    code = train_module.main([str(CPU_RECIPE), *tiny_overrides(work), "--resume", str(run_dir)])
    assert code == 2 and f"is already at step {STEPS} and training.max_steps is {STEPS}" in capsys.readouterr().err


def test_resume_with_nothing_to_resume_says_so(killed_and_resumed, work, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("grpo_r1.training.load_model", no_model)
    monkeypatch.chdir(tmp_path)  # auto looks under ./runs
    base = [str(CPU_RECIPE), *tiny_overrides(work)]

    def refused(*args: str) -> str:
        code = train_module.main([*base, *args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        return err

    assert "no run folder runs/smollm2_gsm8k_cpu-<date>-<time> holds a complete checkpoint" in refused("--resume")
    assert "does not exist" in refused("--resume", str(tmp_path / "nowhere"))
    started = tmp_path / "started"  # a run that stopped before its first checkpoint
    started.mkdir()
    (started / "recipe.yaml").write_text(yaml.safe_dump(load_recipe(CPU_RECIPE, tiny_overrides(work)).to_dict()))
    assert "has no checkpoint to resume from" in refused("--resume", str(started))
    half = started / "checkpoints" / "checkpoint-1"
    shutil.copytree(latest_checkpoint(killed_and_resumed[0]), half)
    (half / COMPLETE_FILE).unlink()
    assert "only incomplete checkpoints (checkpoint-1)" in refused("--resume", str(started))
    assert "pass only one of them" in refused("--resume", str(started), "--overwrite")
    # auto with a new-style run folder name finds the newest run of this recipe that has a checkpoint
    shutil.copytree(killed_and_resumed[0], tmp_path / "runs" / "smollm2_gsm8k_cpu-20260101-000000")
    (tmp_path / "runs" / "smollm2_gsm8k_cpu-20260102-000000").mkdir()  # newer, but nothing to resume
    recipe = load_recipe(CPU_RECIPE, [*tiny_overrides(work), "training.max_steps=5"])
    plan = plan_resume(recipe, "auto", "smollm2_gsm8k_cpu", runs_root=Path("runs"))
    assert plan.run_dir == Path("runs") / "smollm2_gsm8k_cpu-20260101-000000" and plan.step == STEPS
