"""Models built from a named architecture at random init, for measuring speed and memory without weights.

A recipe asks for one with

    model:
      init: random
      architecture: qwen2.5-3b
      tokenizer: path/to/qwen2.5-tokenizer      # a real tokenizer: prompts have their true length

The weights are drawn once per (architecture, dtype, seed) and written as an ordinary Hugging
Face folder under the grpo_r1 cache, so every backend and engine loads it the way it loads a
real model. Random weights almost never sample an end-of-sequence token, so every completion
runs to `generation.max_completion_length`: the worst case, which is what a benchmark wants.
Such a model cannot learn anything useful, so `python -m grpo_r1.train` refuses it unless
`model.train_random_init: true`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from grpo_r1.errors import ModelError
from grpo_r1.model.builtin import cache_dir

# Shapes from the published config.json of each model (Qwen2.5 model cards, SmolLM2).
_QWEN25 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {**_QWEN25, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "intermediate_size": 4864},
    "qwen2.5-1.5b": {**_QWEN25, "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "intermediate_size": 8960},
    "qwen2.5-3b": {**_QWEN25, "hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16,
                   "num_key_value_heads": 2, "intermediate_size": 11008},
    "qwen2.5-7b": {**_QWEN25, "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                   "tie_word_embeddings": False},
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                         tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5),
}


def architecture_config(name: str) -> Any:
    """The transformers config of architecture `name` (a key of ARCHITECTURES)."""
    from transformers import AutoConfig

    if name not in ARCHITECTURES:
        raise ModelError(f"model.architecture {name!r} is not one grpo_r1 knows; choose one of {sorted(ARCHITECTURES)}")
    shape = dict(ARCHITECTURES[name])
    return AutoConfig.for_model(shape.pop("model_type"), **shape)


def random_model_path(name: str, tokenizer_path: str, dtype: torch.dtype, seed: int = 0) -> Path:
    """A Hugging Face folder holding architecture `name` at random init, made on first use.

    The weights are drawn on the GPU when there is one (seconds for 3B parameters) with
    `torch.manual_seed(seed)`, and saved in `dtype` with the tokenizer at `tokenizer_path`
    (whose special tokens become the model's bos/eos/pad ids).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = architecture_config(name)
    dtype_name = str(dtype).removeprefix("torch.")
    tokenizer_key = hashlib.sha1(str(Path(tokenizer_path).expanduser().resolve()).encode()).hexdigest()[:8]
    folder = cache_dir() / "random" / f"{name}-{dtype_name}-seed{seed}-tok{tokenizer_key}"
    if (folder / "grpo_r1_random.json").is_file():
        return folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as e:
        raise ModelError(f"model.tokenizer {tokenizer_path!r} could not be loaded ({str(e).splitlines()[0]}); "
                         f"a model at random init needs a real tokenizer folder") from None
    if len(tokenizer) > config.vocab_size:
        raise ModelError(f"model.tokenizer has {len(tokenizer)} tokens but architecture {name!r} only "
                         f"{config.vocab_size}; use the tokenizer of that model family")
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written under a name of its own, then renamed: several processes (accelerate launch) may
    # build it at once, and a reader only ever sees a complete folder.
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        (partial / "grpo_r1_random.json").write_text(
            json.dumps({"architecture": name, "seed": seed, "dtype": dtype_name}))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        if folder.exists() and not (folder / "grpo_r1_random.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an old layout without the marker
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / "grpo_r1_random.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
