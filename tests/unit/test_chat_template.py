"""model.chat_template: the prompts of a base model (no template of its own) in the plain format, or
a Jinja file of the user's, as the trainer, the cold start and the engines tokenize them.
(Its refusal without a template: tests/unit/test_bad_input.py; a base model trained: tests/train/test_base_model.py.)"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from grpo_r1.model.templates import PLAIN_TEMPLATE, use_chat_template
from grpo_r1.prompts import build_prompt, tokenize_prompts
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.cold_start import tokenize_example
from tests.helpers import CPU_RECIPE
from tests.unit.test_bad_input import base_model_folder


def test_plain_formats_the_system_prompt_question_and_answer_ending_in_eos(tmp_path):
    folder = base_model_folder(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    recipe = load_recipe(CPU_RECIPE, [f"model.name_or_path={folder}", "model.chat_template=plain"])
    use_chat_template(tokenizer, recipe)
    assert tokenizer.chat_template == PLAIN_TEMPLATE
    prompt = build_prompt("Tom has 3 apples and buys 4. How many?", "Think, then answer.")
    (ids,) = tokenize_prompts(tokenizer, [prompt])
    assert tokenizer.decode(ids) == "Think, then answer.\n\nQuestion: Tom has 3 apples and buys 4. How many?\nAnswer: "
    tokens, labels = tokenize_example(tokenizer, prompt, "<answer>7</answer>")
    assert tokens[:len(ids)] == ids and tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([t for t in labels if t != -100]) == "<answer>7</answer>" + tokenizer.eos_token


def test_a_jinja_file_next_to_the_recipe_replaces_the_tokenizers_own(tmp_path):
    (tmp_path / "mine.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(Path(CPU_RECIPE).read_text())
    recipe = load_recipe(recipe_file, ["model.chat_template=mine.jinja"])
    from grpo_r1.model.builtin import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path("smollm2-135m"))  # it has a template of its own
    use_chat_template(tokenizer, recipe)
    (ids,) = tokenize_prompts(tokenizer, [build_prompt("2+2?", "Be brief.")])
    assert tokenizer.decode(ids) == "[system] Be brief.\n[user] 2+2?\n[assistant] "
