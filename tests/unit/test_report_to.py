"""logging.report_to: one tracker name or a list, checked once when the recipe is built (names, "none"
alone) and on the machine before the model loads (packages installed); what reaches GRPOConfig.
A real run reporting to TensorBoard: tests/train/test_trackers.py."""

import sys

import pytest
import torch

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import LoggingConfig, load_recipe, recipe_from_dict
from grpo_r1.recipe.sections import REPORTERS
from grpo_r1.run.tracking import check_reporters, start_wandb
from grpo_r1.trainer.grpo_config import grpo_config
from tests.helpers import CPU_RECIPE


def reporting(value):
    return recipe_from_dict({"logging": {"report_to": value}}).logging


@pytest.mark.parametrize("value, held, reporters", [
    ("wandb", ["wandb"], ["wandb"]),  # what existing recipes say
    ("none", ["none"], []),
    ("tensorboard", ["tensorboard"], ["tensorboard"]),
    (["wandb", "tensorboard"], ["wandb", "tensorboard"], ["wandb", "tensorboard"]),
    (["tensorboard", "tensorboard", "mlflow"], ["tensorboard", "mlflow"], ["tensorboard", "mlflow"]),
    (["none"], ["none"], []),
])
def test_one_name_or_a_list(value, held, reporters):
    logging = reporting(value)
    assert logging.report_to == held and logging.reporters == reporters


def test_default_is_wandb_and_a_single_name_equals_its_list():
    assert recipe_from_dict({}).logging.report_to == ["wandb"]
    assert recipe_from_dict({"logging": {"report_to": "wandb"}}) == recipe_from_dict({})
    assert LoggingConfig(report_to="none").report_to == ["none"]  # built in Python, too


def test_the_saved_recipe_reads_back_the_same():
    recipe = recipe_from_dict({"logging": {"report_to": ["wandb", "tensorboard"]}})
    assert recipe_from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("override, expected", [
    ("logging.report_to=[wandb,tensorboard]", ["wandb", "tensorboard"]),
    ("logging.report_to=[wandb, tensorboard]", ["wandb", "tensorboard"]),
    ("logging.report_to=tensorboard", ["tensorboard"]),
    ("logging.report_to=none", ["none"]),
])
def test_command_line_overrides(override, expected):
    assert load_recipe(CPU_RECIPE, [override]).logging.report_to == expected


@pytest.mark.parametrize("value, expect", [
    ("tensorbord", ["'logging.report_to'", "unknown tracker 'tensorbord'", "did you mean 'tensorboard'?",
                    "accepted: wandb, tensorboard, trackio, mlflow, none"]),
    (["wandb", "mlfow"], ["'mlfow'", "did you mean 'mlflow'?"]),
    ("all", ["unknown tracker 'all'", "accepted: wandb, tensorboard, trackio, mlflow, none"]),
    (["none", "wandb"], ["'logging.report_to'", "'none' together with 'wandb'", "drop it, or write it alone"]),
    (["tensorboard", "none"], ["'none' together with 'tensorboard'"]),
    ([], ["'logging.report_to' is an empty list", "none"]),
    (5, ["'logging.report_to' must be a string or a list, each item a string", "5 (int)"]),
    ([True], ["'logging.report_to' must be a string or a list, each item a string"]),
])
def test_bad_values_are_refused_naming_the_fix(value, expect):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"logging": {"report_to": value}}, source="r.yaml")
    message = str(info.value)
    assert message.startswith("r.yaml: ")
    missing = [text for text in expect if text not in message]
    assert not missing, message


def test_every_accepted_name_is_a_transformers_integration():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(REPORTERS) <= set(INTEGRATION_TO_CALLBACK)


@pytest.mark.parametrize("name", ["tensorboard", "trackio", "mlflow"])
def test_a_tracker_not_installed_is_refused_with_the_pip_command(name, monkeypatch):
    for module in (name, "tensorboardX"):
        monkeypatch.setitem(sys.modules, module, None)  # how Python marks a module unimportable
    with pytest.raises(RecipeError) as info:
        check_reporters(reporting(["wandb", name]))
    message = str(info.value)
    assert f"logging.report_to names {name}" in message and f"`pip install {name}`" in message, message


def test_installed_trackers_pass_the_machine_check():
    check_reporters(reporting("wandb"))
    check_reporters(reporting("none"))
    pytest.importorskip("tensorboard")
    check_reporters(reporting(["wandb", "tensorboard"]))


@pytest.mark.parametrize("value, expected", [
    (["wandb", "tensorboard"], ["wandb", "tensorboard"]),
    ("tensorboard", ["tensorboard"]),
    ("none", []),  # transformers reads "none" as no integration
])
def test_the_list_reaches_grpo_config(value, expected, tmp_path):
    recipe = recipe_from_dict({"logging": {"report_to": value}})
    assert grpo_config(recipe, tmp_path, "run", torch.float32, cpu=True).report_to == expected


def test_logging_project_is_trackios_too(tmp_path):
    recipe = recipe_from_dict({"logging": {"report_to": "trackio", "project": "gsm8k-runs"}})
    assert grpo_config(recipe, tmp_path, "run", torch.float32, cpu=True).project == "gsm8k-runs"
    with pytest.raises(RecipeError, match="'training.project' is set by 'logging.project'"):
        recipe_from_dict({"training": {"project": "gsm8k-runs"}})


def test_no_wandb_run_without_wandb_in_report_to(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # start_wandb must not even import it
    assert start_wandb(reporting(["tensorboard"]), "run", tmp_path, {}) is None
    assert start_wandb(reporting("none"), "run", tmp_path, {}) is None
    assert not list(tmp_path.iterdir())
