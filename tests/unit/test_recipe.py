"""The recipe: every shipped YAML parses; bad keys, types and overrides fail with the fix named."""

from pathlib import Path

import pytest

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import Recipe, load_recipe, recipe_from_dict
from grpo_r1.trainer.grpo_config import check_training

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("**/*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    if "accelerate" in path.parts:
        pytest.skip("accelerate launcher configs are not grpo_r1 recipes")
    recipe = load_recipe(path)
    check_training(recipe)  # its training: section is a valid GRPOConfig with a valid batch
    assert isinstance(recipe, Recipe)
    assert recipe.rewards, "a shipped recipe must name rewards"


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"qwen3b_gsm8k.yaml", "smollm2_gsm8k_cpu.yaml"} <= names


def load_checked(path, overrides=()):
    """A recipe as the front doors read it: every section, and training: against TRL's GRPOConfig."""
    recipe = load_recipe(path, overrides)
    check_training(recipe)
    return recipe


def test_values_and_defaults_are_typed(tmp_path):
    recipe = load_checked(write(tmp_path, "lora: {r: 8}\ntraining: {max_steps: 3, learning_rate: 1}\n"))
    assert load_checked(write(tmp_path, "training: {learning_rate: 1e-3}"),
                        ["lora.dropout=5e-2"]).training["learning_rate"] == 1e-3
    assert recipe.lora.r == 8
    assert recipe.lora.alpha == 32  # default kept
    assert recipe.training["learning_rate"] == 1.0 and isinstance(recipe.training["learning_rate"], float)
    assert recipe.to_dict()["training"]["beta"] > 0, "the KL penalty is on by default"


def test_training_defaults_are_filled_in_however_a_recipe_is_made():
    import dataclasses

    from grpo_r1.recipe import TRAINING_DEFAULTS

    made = [recipe_from_dict({"training": {"max_steps": 3}}), Recipe(training={"max_steps": 3}),
            dataclasses.replace(Recipe(), training={"max_steps": 3})]
    for recipe in made:
        assert recipe.training == {**TRAINING_DEFAULTS, "max_steps": 3}


def test_overrides_apply_dotted_keys_with_yaml_values(tmp_path):
    path = write(tmp_path, "rewards: [xml_count, {name: gsm8k_correctness, weight: 1}]\n")
    recipe = load_recipe(path, ["training.max_steps=5", "lora.r=4", "rewards.1.weight=2.5",
                                "lora.target_modules=[q_proj, v_proj]", "logging.run_name=abc"])
    assert recipe.training["max_steps"] == 5
    assert recipe.lora.r == 4
    assert recipe.rewards[1].weight == 2.5
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.logging.run_name == "abc"


@pytest.mark.parametrize("text, expected", [
    ("lora: {rank: 8}", "unknown key 'lora.rank'"),
    ("trainin: {max_steps: 1}", "did you mean 'training'"),
    ("training: {max_step: 1}", "did you mean 'training.max_steps'"),
    ("generation: {engine: vlm}", "did you mean 'vllm'"),
    ("lora: {r: eight}", "'lora.r' must be an integer, got 'eight'"),
    ("training: {learning_rate: fast}", "'training.learning_rate' must be a number"),
    ("lora: {target_modules: q_proj}", "'lora.target_modules' must be a list"),
    ("training: {num_generations: 4}", "set by 'generation.num_generations'"),
    ("generation: {num_generations: 3}", "must divide"),
    ("generation: {num_generations: 1}", "at least 2"),
    ("generation: {temperature: 0}", "'generation.temperature' must be above 0"),
    ("generation: {top_p: 1.5}", "'generation.top_p' is a fraction in (0, 1]"),
    ("rewards: []", "'rewards' is empty"),
    ("rewards: [{weight: 1}]", "needs the key 'rewards[0].name'"),
    ("model: {backend: transformers}\ngeneration: {engine: unsloth}", "needs model.backend 'unsloth'"),
    ("generation: {engine: vllm, merged_weights: true}",
     "'generation.merged_weights' applies to generation.engine 'hf-compiled' only"),
    ("generation: {importance_sampling: maybe}", "'generation.importance_sampling' must be"),
    ("- a\n- b", "a recipe is a YAML mapping"),
    ("model: {name_or_path: [unclosed", "not valid YAML at line"),
])
def test_bad_recipes_name_the_key_and_the_fix(tmp_path, text, expected):
    with pytest.raises(RecipeError, match=None) as info:
        load_checked(write(tmp_path, text + "\n"))
    assert expected in str(info.value)


@pytest.mark.parametrize("override, expected", [
    ("training.max_steps", "is not of the form section.key=value"),
    ("rewards.0.weight=1", "has no 'rewards' list to index"),
    ("lora.rank=4", "unknown key 'lora.rank'"),
])
def test_bad_overrides_are_errors(tmp_path, override, expected):
    with pytest.raises(RecipeError) as info:
        load_checked(write(tmp_path, ""), [override])
    assert expected in str(info.value)


def test_overrides_reach_into_rewards_named_alone(tmp_path):
    path = write(tmp_path, "rewards: [graded_format, lenient_correctness]\n")
    recipe = load_recipe(path, ["rewards.0.weight=2", "rewards.1.name=gsm8k_correctness",
                                "rewards.0.kwargs.tags.answer=final", "rewards.1.kwargs.tags.answer=final",
                                "data.system_prompt=''"])
    assert [(spec.name, spec.weight) for spec in recipe.rewards] == [("graded_format", 2.0), ("gsm8k_correctness", 1.0)]
    assert recipe.layout.answer == "final"


def test_override_index_past_the_list_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="indexes a list of 2 items"):
        load_recipe(write(tmp_path, "rewards: [xml_count, int_answer]\n"), ["rewards.9.weight=1"])


def test_missing_recipe_file_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_to_dict_round_trips():
    recipe = recipe_from_dict({"lora": {"r": 4}, "training": {"max_steps": 2}})
    again = recipe_from_dict(recipe.to_dict())
    assert again.lora == recipe.lora
    assert again.training["max_steps"] == 2
