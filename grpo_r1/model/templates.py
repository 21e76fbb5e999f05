"""The chat template the prompts are formatted with: the tokenizer's own, or `model.chat_template`.

Every prompt grpo_r1 builds is a list of chat messages (system prompt, question), formatted by
the tokenizer's chat template, as TRL does. A base model's tokenizer often has none; then the run
is refused before the weights load, naming the fix, unless `model.chat_template` gives one:

    plain        "<system prompt>\\n\\nQuestion: <question>\\nAnswer: " and the answer, ended by the
                 tokenizer's eos token. No special tokens needed, so any base model can learn it (the
                 cold start teaches the layout and the eos).
    <file.jinja> a Jinja chat template of your own (relative paths: from the recipe's folder).

It replaces the tokenizer's own template where there is one, and is saved with the adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_r1.errors import ModelError
from grpo_r1.recipe import Recipe

PLAIN = "plain"

# The system prompt, then "Question: ...", then "Answer: " for the model to continue; an answer in the
# conversation (the cold start's targets) ends with the eos token.
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Question: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Answer: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Answer: ' }}{%- endif -%}"
)


def chat_template_setting(recipe: Recipe) -> str | None:
    """The template text `model.chat_template` names, or None to keep the tokenizer's own."""
    setting = recipe.model.chat_template
    if setting is None:
        return None
    if setting == PLAIN:
        return PLAIN_TEMPLATE
    path = Path(setting).expanduser()
    if not path.is_absolute() and recipe.base_dir is not None and (recipe.base_dir / path).is_file():
        path = recipe.base_dir / path
    if not path.is_file():
        raise ModelError(f"model.chat_template {setting!r} is neither 'plain' nor a Jinja file that exists; "
                         "give 'plain' (a plain-text format for base models) or the path of a .jinja chat template")
    return path.read_text()


def use_chat_template(tokenizer: Any, recipe: Recipe) -> None:
    """Give `tokenizer` the recipe's chat template, or refuse one that has none (before any weights load)."""
    template = chat_template_setting(recipe)
    if template is not None:
        tokenizer.chat_template = template
        return
    if not getattr(tokenizer, "chat_template", None):
        name = recipe.model.tokenizer or recipe.model.name_or_path
        raise ModelError(f"the tokenizer of {name!r} has no chat template, and grpo_r1 formats every prompt as chat "
                         "messages (system prompt, question); a base model has none. Set model.chat_template=plain "
                         "(\"Question: ... Answer: ...\", learnt in the cold start), or give a .jinja template file, "
                         "or model.tokenizer=<a tokenizer that has one>")
