"""The trainer's LoRA adapter as vLLM reads it: checks, and a folder in PEFT's format.

vLLM 0.32 loads a LoRA only from a folder (`LoRARequest.lora_path`; it has no in-memory
form), so the engine writes the live adapter to a temporary folder per version:
`adapter_model.safetensors` (PEFT key names) and `adapter_config.json`. For SmolLM2-135M
with r=16 on all seven projections that is 19 MiB, written in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_r1.errors import EngineError


def active_lora(model: Any) -> tuple[str, Any]:
    """The name and LoraConfig of `model`'s active adapter, checked for what vLLM can serve."""
    peft_config = getattr(model, "peft_config", None)
    if not peft_config:
        raise EngineError(
            "the vllm engine serves a LoRA adapter, but the trained model has none; train with a LoRA "
            "adapter (the recipe's lora: section) or set generation.engine=hf"
        )
    name = getattr(model, "active_adapter", None)
    if isinstance(name, (list, tuple)):
        if len(name) != 1:
            raise EngineError(f"the model has {len(name)} active adapters {list(name)}; "
                              "the vllm engine serves exactly one")
        name = name[0]
    if name not in peft_config:
        raise EngineError(f"the model's active adapter {name!r} is not among its adapters {sorted(peft_config)}")
    config = peft_config[name]
    kind = str(getattr(config, "peft_type", ""))
    if not kind.endswith("LORA"):
        raise EngineError(f"the model's adapter is {kind or type(config).__name__}, not LoRA; "
                          "the vllm engine serves LoRA only")
    if getattr(config, "use_dora", False):
        raise EngineError("vLLM does not serve DoRA adapters; set use_dora=False or generation.engine=hf")
    if getattr(config, "modules_to_save", None):
        raise EngineError(
            f"the adapter also trains whole modules {list(config.modules_to_save)} (modules_to_save), which vLLM "
            f"cannot serve; drop them or set generation.engine=hf"
        )
    return name, config


def lora_rank(config: Any) -> int:
    """The largest rank in a LoraConfig (its `r` and any per-module `rank_pattern`)."""
    ranks = [int(config.r), *(int(r) for r in (getattr(config, "rank_pattern", None) or {}).values())]
    return max(ranks)


def write_adapter(model: Any, folder: str | Path) -> Path:
    """Write `model`'s active LoRA adapter into `folder` (created) as PEFT saves it; return `folder`."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name, config = active_lora(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    if not state:
        raise EngineError(f"adapter {name!r} has no LoRA weights to serve; check lora.target_modules")
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    return folder
