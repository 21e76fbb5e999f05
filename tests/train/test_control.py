"""The supervised controls of a GRPO run (python -m grpo_r1.control), trained from the shared run's folder:
the same questions GRPO drew, the same number of optimizer steps, the cold start reproduced and extended."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from grpo_r1.control import main as control_main
from grpo_r1.data import load_questions
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.control import grpo_optimizer
from tests.helpers import smollm2_folder, tiny_grpo_trainer
from tests.train.conftest import STEPS


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sft_control_trains_on_the_questions_grpo_drew_with_as_many_steps(shared_run, tmp_path, capsys):
    out = tmp_path / "sft"
    assert control_main([str(shared_run.run_dir), "--arm", "sft", "--out", str(out)]) == 0
    assert "control sft: 2 steps" in capsys.readouterr().out
    summary = json.loads((out / "control.json").read_text())
    assert summary["steps"] == STEPS and summary["seconds"] > 0
    # The questions of each step are the ones GRPO's completions log shows for that step (one question a step).
    recipe = load_recipe(shared_run.run_dir / "recipe.yaml")
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    logged = {row["step"]: row["prompt"] for row in _lines(shared_run.run_dir / "completions.jsonl")}
    assert [len(rows) for rows in summary["questions"]] == [1] * STEPS
    for step, rows in enumerate(summary["questions"], start=1):
        assert dataset[rows[0]]["question"] in logged[step]
    # GRPO's learning-rate schedule (linear decay from training.learning_rate) and a trained adapter.
    records = _lines(out / "metrics.jsonl")
    assert records[0]["learning_rate"] == pytest.approx(recipe.training["learning_rate"])
    assert records[1]["learning_rate"] < records[0]["learning_rate"]
    start = load_file(shared_run.run_dir / "cold_start" / "adapter" / "adapter_model.safetensors")
    trained = load_file(out / "adapter" / "adapter_model.safetensors")
    assert start.keys() == trained.keys()
    assert any(not (start[k] == trained[k]).all() for k in start)


def test_the_longer_cold_start_repeats_the_runs_cold_start_then_goes_on(shared_run, tmp_path):
    out = tmp_path / "longer"
    assert control_main([str(shared_run.run_dir), "--arm", "longer-cold-start", "--out", str(out)]) == 0
    cold = _lines(shared_run.run_dir / "cold_start" / "metrics.jsonl")
    longer = _lines(out / "metrics.jsonl")
    assert len(longer) == len(cold) + STEPS
    for theirs, ours in zip(cold, longer, strict=False):  # same fresh adapter, same examples, same order
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_the_control_refuses_what_it_cannot_use(shared_run, tmp_path, capsys):
    assert control_main([str(tmp_path), "--arm", "sft"]) == 2
    assert "is not a run folder (no recipe.yaml)" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    assert control_main([str(shared_run.run_dir), "--arm", "sft", "--out", str(taken)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (taken / "something").is_file()  # nothing lost
    no_cold = tmp_path / "no_cold"
    no_cold.mkdir()
    text = (shared_run.run_dir / "recipe.yaml").read_text()
    text = text.replace("cold_start:\n  steps: 1", "cold_start:\n  steps: 0")
    (no_cold / "recipe.yaml").write_text(text)
    assert control_main([str(no_cold), "--arm", "sft"]) == 2
    assert "had no cold start" in capsys.readouterr().err


def test_the_controls_optimizer_is_the_one_the_trainer_builds(tmp_path):
    from transformers import AutoTokenizer

    folder = smollm2_folder()
    trainer = tiny_grpo_trainer(folder, AutoTokenizer.from_pretrained(folder), None, output_dir=str(tmp_path))
    trainer.args.weight_decay = 0.1
    theirs = trainer.create_optimizer()
    ours = grpo_optimizer(trainer.model, trainer.args)
    assert type(ours) is type(theirs)
    assert ([(len(g["params"]), g["weight_decay"], g["lr"], g["betas"]) for g in ours.param_groups]
            == [(len(g["params"]), g["weight_decay"], g["lr"], g["betas"]) for g in theirs.param_groups])
    assert [p.data_ptr() for g in ours.param_groups for p in g["params"]] == \
        [p.data_ptr() for g in theirs.param_groups for p in g["params"]]
