"""Generation engines: sample a GRPO step's completions outside TRL's built-in `generate`.

    hf           TRL's own generation (no engine object)
    hf-compiled  the trainer's own model, static KV cache + torch.compile, one batch per round
    vllm         an in-process vLLM of the base model; each new adapter version goes over as
                 a vLLM LoRA (vllm_engine.py)
    unsloth      Unsloth's fast_inference vLLM sharing the model's weights (unsloth_engine.py)

An engine works on token ids only: it knows no chat messages, no tokenizer templates and no
trainer. grpo_r1.trainer.rollout plugs one into TRL's GRPOTrainer (see docs/engines.md).
Importing this package imports neither vLLM nor Unsloth, nor TRL.
"""

from grpo_r1.engines.base import Completion, Engine, SamplingSettings
from grpo_r1.engines.build import (
    ENGINES,
    EngineSettings,
    build_engine,
    check_engine,
    engine_from_recipe,
    engine_memory_need,
    engine_settings,
)

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineSettings",
    "SamplingSettings",
    "build_engine",
    "check_engine",
    "engine_from_recipe",
    "engine_memory_need",
    "engine_settings",
]
