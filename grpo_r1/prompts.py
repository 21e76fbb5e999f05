"""Prompts and targets in the R1 layout, and prompt tokenization as the trainer does it.

The layout itself (tags, system prompt, the exact text) is `rewards.layout`; this module turns
questions into chat prompts, GSM8K-style reference solutions into R1 targets, and prompts into
token ids the way TRL's GRPOTrainer tokenizes them (chat template, generation prompt added), so
the cold start, the engines and the preflight all see the trainer's tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from grpo_r1.errors import EngineError
from rewards.layout import R1, SYSTEM_PROMPT, Layout

__all__ = ["SYSTEM_PROMPT", "build_prompt", "longest_prompt", "r1_target", "solution_steps", "tokenize_prompts"]

Messages = list[dict[str, str]]

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "4*3 = <<4*3=12>>12"


def build_prompt(question: str, system_prompt: str) -> Messages:
    """The chat messages for one question; no system message when `system_prompt` is empty."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def solution_steps(solution: str) -> str:
    """A GSM8K-style solution as plain reasoning: `<<48/2=24>>` calculator notes and the `#### 72` line removed."""
    return _CALCULATOR_NOTE.sub("", solution).split("####")[0].strip()


def r1_target(solution: str, gold: str, layout: Layout = R1) -> str:
    """A reference solution in R1 layout: its steps as the reasoning, the gold as the answer."""
    return layout.text(solution_steps(solution), str(gold).strip())


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    chat_template: str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Token ids of each prompt as TRL tokenizes them: chat messages through the chat template
    with the generation prompt added, plain strings as they are."""
    if not prompts:
        return []
    if _is_conversation(prompts[0]):
        for prompt in prompts:
            for message in prompt:
                if not isinstance(message.get("content"), str):
                    raise EngineError("the engines take text-only chat messages; for images use generation.engine=hf")
        encoded = tokenizer.apply_chat_template(
            conversation=list(prompts),
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **(chat_template_kwargs or {}),
        )
        return [list(ids) for ids in encoded["input_ids"]]
    if not all(isinstance(p, str) for p in prompts):
        raise EngineError("prompts must be chat message lists or strings")
    return [list(ids) for ids in tokenizer(text=list(prompts))["input_ids"]]


def longest_prompt(dataset: Any, tokenizer: Any, batch_size: int = 256) -> tuple[int, int]:
    """(row, token count) of the dataset's longest prompt, tokenized as the trainer does (chat template)."""
    best_row, best_len = 0, -1
    prompts = dataset["prompt"]
    for start in range(0, len(prompts), batch_size):
        for offset, ids in enumerate(tokenize_prompts(tokenizer, prompts[start:start + batch_size])):
            if len(ids) > best_len:
                best_row, best_len = start + offset, len(ids)
    return best_row, best_len


def _is_conversation(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]
