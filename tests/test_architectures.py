"""Models at random init from a named architecture, and the refusal to train one by accident."""

import json

import pytest

from grpo_r1 import train as train_module
from grpo_r1.architectures import ARCHITECTURES, architecture_config
from grpo_r1.builtin_models import builtin_model_path
from grpo_r1.errors import ModelError, RecipeError
from grpo_r1.model import load_model
from grpo_r1.recipe import recipe_from_dict


def test_qwen3b_has_the_published_shape():
    config = architecture_config("qwen2.5-3b")
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.intermediate_size, config.tie_word_embeddings) == (
        151936, 2048, 36, 16, 2, 11008, True)


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ModelError, match="qwen2.5-3b"):
        architecture_config("qwen9-1t")


@pytest.mark.parametrize("model, match", [
    ({"init": "random"}, "model.architecture"),
    ({"init": "random", "architecture": "qwen2.5-3b"}, "model.tokenizer"),
    ({"architecture": "qwen2.5-3b"}, "model.init=random"),
])
def test_recipe_checks_random_init_settings(model, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict({"model": model})


@pytest.mark.slow
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


def test_training_a_random_model_is_refused_unless_asked(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("grpo_r1.model.load_model", lambda *a, **k: called.append(1))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {init: random, architecture: qwen2.5-3b, tokenizer: somewhere}\n")
    code = train_module.main([str(recipe), f"run.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "model.train_random_init=true" in err[-1]
    assert not called and not (tmp_path / "run").exists()
