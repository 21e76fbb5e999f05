"""Sample completions from a Hugging Face model (optionally with a LoRA adapter), in batches.

Shared by evaluation (`python -m grpo_r1.evaluate`) and the reward check's `--generate`:

    model, tokenizer = load_for_generation(recipe, adapter_dir)   # adapter_dir None: the base model
    outs = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=8)

Prompts are chat messages, rendered with the tokenizer's chat template as the trainer renders
them, left-padded into batches, and generated until an end-of-sequence token or
`max_new_tokens`. Each completion comes back with its token count (the EOS token included, as
TRL counts `completions/mean_length`) and whether it was cut off before an EOS (TRL's
`completions/clipped_ratio`). Generation here is always transformers' `generate`; evaluation
samples through the recipe's engine instead unless it is `hf` (grpo_r1.evaluation).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_r1.engines.base import eos_token_ids
from grpo_r1.errors import ModelError
from grpo_r1.recipe import Recipe

ADAPTER_CONFIG = "adapter_config.json"
Messages = list[dict[str, str]]


@dataclass
class Completion:
    """One generated completion."""

    text: str  # decoded without special tokens
    num_tokens: int  # generated tokens up to and including the first EOS
    truncated: bool  # True when no EOS came within max_new_tokens


def find_adapter_dir(path: str | Path) -> Path:
    """The LoRA adapter folder for `path`: a run folder (holding adapter/) or the adapter folder itself.

    Raises ModelError naming what was expected when neither holds an adapter_config.json.
    """
    path = Path(path).expanduser()
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    if not path.exists():
        raise ModelError(f"adapter {str(path)!r} does not exist; "
                         "pass a run folder (runs/<name>) or its adapter/ folder")
    raise ModelError(f"{str(path)!r} holds no {ADAPTER_CONFIG} (nor does {str(path / 'adapter')!r}); "
                     f"pass a run folder (runs/<name>) or its adapter/ folder")


def adapter_base_model(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on, as its adapter_config.json records it."""
    try:
        return json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def load_for_generation(recipe: Recipe, adapter: str | Path | None = None,
                        device: str | None = None) -> tuple[Any, Any]:
    """The recipe's base model (with the LoRA adapter at `adapter` when given) and its tokenizer, ready to generate.

    Always the transformers backend: Unsloth is only needed to train. 4-bit loading is kept
    when the recipe asks for it (a CUDA GPU with bitsandbytes). The model is put on `device`
    (default: the GPU when there is one, else the CPU; a 4-bit model stays where it loaded), in
    eval mode. With an adapter the result is a `peft.PeftModel`; use `model.disable_adapter()`
    as a context manager to generate from the base model with it.
    """
    import torch

    from grpo_r1.model import check_model_can_load, load_base_model

    model_cfg = dataclasses.replace(recipe.model, backend="transformers", gradient_checkpointing=False)
    base_recipe = dataclasses.replace(recipe, model=model_cfg)
    check_model_can_load(base_recipe)
    adapter_dir = find_adapter_dir(adapter) if adapter is not None else None
    model, tokenizer, path = load_base_model(base_recipe)
    if not model_cfg.load_in_4bit:
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"adapter {str(adapter_dir)!r} does not fit model {path!r} ({first[:200]}); "
                             f"evaluate it with the recipe it was trained with "
                             f"(its run folder's recipe.yaml)") from None
    model.eval()
    return model, tokenizer


def generation_config(model: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float, top_p: float,
                      num_samples: int = 1) -> tuple[Any, list[int]]:
    """transformers' GenerationConfig for plain `generate` (no compile), and its stop token ids:
    sampling at `temperature` with `top_p` and no top-k, or greedy when `temperature` is 0."""
    from transformers import GenerationConfig

    stop_ids = list(eos_token_ids(model, tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    sampling = temperature > 0  # transformers refuses temperature=0 with sampling: 0 means greedy
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        num_return_sequences=num_samples,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        disable_compile=True,
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {}),
    )
    return config, stop_ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    on_batch: Callable[[int], Any] | None = None,
) -> list[list[Completion]]:
    """`num_samples` completions for each chat prompt, generated in left-padded batches.

    Greedy decoding unless `do_sample` (then `temperature` and `top_p` apply, and `seed` makes
    the samples repeatable). `batch_size` counts sequences: a batch holds
    `max(1, batch_size // num_samples)` prompts, each with its `num_samples` completions.
    `on_batch(n)` is called after each batch with the number of prompts it finished (a progress bar's `update`).
    Returns one list per prompt, in order.
    """
    import torch

    if num_samples > 1 and not do_sample:
        raise ValueError("several completions per prompt need do_sample=True; greedy decoding gives one")
    config, stop_ids = generation_config(model, tokenizer, max_new_tokens=max_new_tokens,
                                         temperature=temperature if do_sample else 0.0, top_p=top_p,
                                         num_samples=num_samples)
    encoded = [_prompt_ids(tokenizer, messages) for messages in prompts]
    per_batch = max(1, batch_size // num_samples)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    results: list[list[Completion]] = []
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start:start + per_batch]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[config.pad_token_id] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
        generated = out[:, width:].tolist()
        for index in range(len(chunk)):
            rows = generated[index * num_samples:(index + 1) * num_samples]
            results.append([_completion(tokenizer, row, stop_ids) for row in rows])
        if on_batch is not None:
            on_batch(len(chunk))
    return results


def _prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """The prompt's token ids, rendered with the chat template and the assistant turn opened."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _completion(tokenizer: Any, ids: list[int], stop_ids: list[int]) -> Completion:
    """Cut generated ids after the first EOS (the rest is padding) and decode them."""
    end = next((i for i, token in enumerate(ids) if token in stop_ids), None)
    kept = ids if end is None else ids[:end + 1]
    return decoded_completion(tokenizer, kept, truncated=end is None)


def decoded_completion(tokenizer: Any, ids: Sequence[int], *, truncated: bool) -> Completion:
    """A completion's token ids (its end token included, when it has one) as a Completion: the
    text without special tokens, the token count as TRL counts it, and whether it was cut off."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return Completion(text=text, num_tokens=len(ids), truncated=truncated)
