"""What the static decoder's benchmarks share: its variants, the recipe's model with a trained-looking adapter
on the GPU, and a batch of left-padded prompts (for gen_microbench.py and decode_profile.py beside this file)."""

from typing import Any

import torch

from grpo_r1.model import load_model
from grpo_r1.prompts import tokenize_prompts
from grpo_r1.recipe import load_recipe

VARIANTS = {"own-storage": {"merged": False, "share_storage": False},
            "live": {"merged": False, "share_storage": True},
            "merged": {"merged": True}}


def model_on_gpu(recipe_path: str, overrides: list[str]) -> tuple[Any, Any]:
    """The recipe's model on the GPU and its tokenizer, every lora_B drawn from N(0, 1e-3): at zero, as a fresh
    adapter starts, the LoRA products would be no-ops on the values."""
    loaded = load_model(load_recipe(recipe_path, overrides))
    model = loaded.model.to("cuda")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    return model, loaded.tokenizer


def prompt_tokens(tokenizer: Any) -> list[int]:
    """One short chat prompt's token ids."""
    return tokenize_prompts(tokenizer, [[{"role": "user", "content": "What is 12 times 7? " * 8}]])[0]


def left_padded(prompt: list[int], rows: int, width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` copies of `prompt` left-padded to `width` with `pad`, and their attention mask."""
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    ids[:, -len(prompt):] = torch.tensor(prompt)
    mask[:, -len(prompt):] = 1
    return ids, mask
