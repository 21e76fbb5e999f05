"""`python -m grpo_r1.plan` and `run.auto_fit` with real probes: each candidate a process of its own running the
worst-case preflight and timed GRPO steps of the real SmolLM2 on this CPU (the memory cap a GPU enforces is
here the preflight's peak RSS against --mem). Speed is not checked, only that the pick is the fastest that
fits by the plan's own figures and that the run it names passes the preflight."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from grpo_r1.errors import RecipeError
from grpo_r1.planning import FITS, OUT_OF_MEMORY
from grpo_r1.recipe import load_recipe
from grpo_r1.training import train
from tests.helpers import CPU_RECIPE

SHAPE = ["generation.max_completion_length=16", "generation.num_generations=2",
         "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=2", "cold_start.steps=0",
         "data.arithmetic_examples=40", "logging.report_to=none",
         'rewards=[graded_format, "rewards.benchmark:text_hash"]']
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def run(args, cwd, timeout=1500):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("plan")
    proc = run(["grpo_r1.plan", str(CPU_RECIPE), *SHAPE, "--levers", "micro_batch", "--steps", "1", "--warmup", "0",
                "--out", "plan.json"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / "plan.json").read_text()), proc.stdout, cwd


def test_plan_runs_each_candidate_and_picks_the_fastest_that_fits(planned):
    plan, stdout, _ = planned
    probes = plan["probes"]
    # 4 completions a step in micro-batches of 2 (the recipe's), then 4: both fit on this machine
    assert [p["settings"]["training.per_device_train_batch_size"] for p in probes] == [2, 4]
    assert probes[0]["overrides"] == [] and probes[1]["overrides"] == [
        "training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=1"]
    for probe in probes:
        assert probe["status"] == FITS
        assert probe["worst_case_peak_gib"] > 0.3 and probe["cap_gib"] > probe["worst_case_peak_gib"]
        assert probe["s_per_step"] > 0 and probe["questions_per_s"] > 0
    own, other = (p["s_per_step"] for p in probes)
    expected = probes[0] if own <= other * 1.05 else probes[1]
    assert plan["best"] == expected
    assert "| candidate | status | worst-case peak GiB |" in stdout and "**(pick)**" in stdout


def test_the_picked_settings_pass_the_preflight_of_a_real_run(planned):
    plan, stdout, cwd = planned
    command = shlex.split(stdout.split("train with:\n", 1)[1].splitlines()[0])
    assert command[:4] == ["python", "-m", "grpo_r1.train", str(CPU_RECIPE)]
    best = plan["best"]["overrides"]
    assert command[len(command) - len(best):] == best  # the picked settings last, so they win
    proc = run(["grpo_r1.train", *command[3:], "run.preflight=true", "training.max_steps=1", "run.output_dir=run"],
               cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grpo_r1: preflight passed: one step at the worst case" in proc.stdout
    saved = yaml.safe_load((cwd / "run" / "recipe.yaml").read_text())
    assert saved["training"]["per_device_train_batch_size"] == plan["best"]["settings"][
        "training.per_device_train_batch_size"]


def test_nothing_fits_under_a_memory_budget_below_the_models_own(tmp_path):
    proc = run(["grpo_r1.plan", str(CPU_RECIPE), *SHAPE, "--levers", "micro_batch", "--mem", "0.25", "--steps", "1",
                "--warmup", "0", "--out", "plan.json"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    # the recipe's micro-batch of 2 does not fit, nor does 1: the search shrinks it, never grows it
    assert [(p["settings"]["training.per_device_train_batch_size"], p["status"]) for p in plan["probes"]] == [
        (2, OUT_OF_MEMORY), (1, OUT_OF_MEMORY)]
    assert all("is over --mem 0.25" in p["note"] and p["s_per_step"] is None for p in plan["probes"])
    assert plan["best"] is None and "plan: nothing fits in 0.25 GiB" in proc.stdout


def test_auto_fit_trains_with_the_fastest_setting_and_records_it(tmp_path):
    proc = run(["grpo_r1.train", str(CPU_RECIPE), *SHAPE, "training.gradient_accumulation_steps=1",
                "generation.engine=hf", "run.auto_fit=true", "training.max_steps=1", "run.output_dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # micro-batch 2 is the whole step, so the one lever left here is checkpointing: two probes
    probes = [line for line in proc.stdout.splitlines() if line.startswith("grpo_r1: auto_fit: ") and ": fits" in line]
    assert len(probes) == 2, proc.stdout[-3000:]
    picked = next(line for line in proc.stdout.splitlines() if "; training with " in line)
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["run"]["auto_fit"] is False  # the recipe to resume it with plans nothing again
    assert ("model.gradient_checkpointing=true" in picked) == (saved["model"]["gradient_checkpointing"] is True)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_auto_fit_is_refused_when_resuming(tmp_path):
    recipe = load_recipe(CPU_RECIPE, [*SHAPE, "run.auto_fit=true", f"run.output_dir={tmp_path / 'run'}"])
    with pytest.raises(RecipeError, match=r"resume it with the recipe.yaml in its run folder"):
        train(recipe, resume="auto")
    assert not (tmp_path / "run").exists()
