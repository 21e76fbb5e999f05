"""Models at random init from a named architecture, and the refusal to train one by accident."""


import pytest

from grpo_r1 import train as train_module
from grpo_r1.errors import ModelError, RecipeError
from grpo_r1.model.architectures import architecture_config
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


def test_training_a_random_model_is_refused_unless_asked(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("grpo_r1.training.load_model", lambda *a, **k: called.append(1))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {init: random, architecture: qwen2.5-3b, tokenizer: somewhere}\n")
    code = train_module.main([str(recipe), f"run.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "model.train_random_init=true" in err[-1]
    assert not called and not (tmp_path / "run").exists()
