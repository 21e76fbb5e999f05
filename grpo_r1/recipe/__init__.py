"""The recipe: one YAML file that describes a run, validated once into typed objects.

    recipe = load_recipe("recipes/smollm2_gsm8k_cpu.yaml", ["training.max_steps=5"])

`sections.py` is the key reference (every key, its default and meaning), `loading.py` reads YAML
and overrides into the sections, `checks.py` holds the checks that span keys. The `training:`
section is TRL's GRPOConfig: grpo_r1.trainer.grpo_config checks it where it becomes one.
"""

from grpo_r1.recipe.loading import apply_override, load_recipe, recipe_from_dict
from grpo_r1.recipe.sections import (
    GUARD_NAMES,
    TRAINING_DEFAULTS,
    ColdStartConfig,
    DataConfig,
    GenerationConfig,
    GuardsConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    Recipe,
    RewardSpec,
    RunConfig,
)

__all__ = [
    "GUARD_NAMES",
    "TRAINING_DEFAULTS",
    "ColdStartConfig",
    "DataConfig",
    "GenerationConfig",
    "GuardsConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "Recipe",
    "RewardSpec",
    "RunConfig",
    "apply_override",
    "load_recipe",
    "recipe_from_dict",
]
