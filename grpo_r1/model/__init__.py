"""The base model and its LoRA adapter: loading (transformers or Unsloth), the built-in model that
ships in a pip package, and named architectures at random init for benchmarks."""

from grpo_r1.model.loading import (
    LoadedModel,
    check_model_can_load,
    load_adapter_weights,
    load_base_model,
    load_model,
    model_path,
    resolve_dtype,
    resolve_model_path,
)

__all__ = [
    "LoadedModel",
    "check_model_can_load",
    "load_adapter_weights",
    "load_base_model",
    "load_model",
    "model_path",
    "resolve_dtype",
    "resolve_model_path",
]
