"""A named architecture at random init, built once as a Hugging Face folder with the real tokenizer."""

from __future__ import annotations

import json

from grpo_r1.model import load_model
from grpo_r1.model.architectures import ARCHITECTURES
from grpo_r1.model.builtin import builtin_model_path
from grpo_r1.recipe import recipe_from_dict


def test_random_init_model_is_built_once_with_the_tokenizers_special_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_R1_CACHE", str(tmp_path))
    tokenizer_dir = str(builtin_model_path("smollm2-135m"))  # materialised under the test's cache
    recipe = recipe_from_dict({"model": {"init": "random", "architecture": "smollm2-135m", "tokenizer": tokenizer_dir}})
    loaded = load_model(recipe)
    folder = loaded.base_path
    assert json.loads(open(f"{folder}/grpo_r1_random.json").read())["architecture"] == "smollm2-135m"
    config = loaded.model.base_model.model.config
    assert config.num_hidden_layers == ARCHITECTURES["smollm2-135m"]["num_hidden_layers"]
    assert config.eos_token_id == loaded.tokenizer.eos_token_id
    again = load_model(recipe)
    assert again.base_path == folder  # made once, then reused
    real = load_model(recipe_from_dict({}))
    name = "base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"
    assert not (dict(real.model.named_parameters())[name] == dict(loaded.model.named_parameters())[name]).all()
