"""Generation engines: sample a GRPO step's completions outside TRL's built-in `generate`.

    hf           TRL's own generation (no engine object; rollout_func stays None)
    hf-compiled  the trainer's own model, static KV cache + torch.compile, one batch per round
    vllm     an in-process vLLM of the base model; each new adapter version goes over as a
             vLLM LoRA (vllm_engine.py)
    unsloth  Unsloth's fast_inference vLLM sharing the model's weights (unsloth_engine.py)

Wiring into TRL's GRPOTrainer (see docs/engines.md):

    engine = build_engine(kind, settings, model, tokenizer, base_model_dir=...)  # or engine_from_recipe
    trainer = GRPOTrainer(..., args=GRPOConfig(use_vllm=False, ...), rollout_func=make_rollout_func(engine))
    install_step_timer(trainer)          # timing/{generation,scoring,training,step}_s per step
    try:
        trainer.train()
    finally:
        if engine is not None:
            engine.close()

Importing this package imports neither vLLM nor Unsloth.
"""

from grpo_r1.engines.base import Completion, Engine, SamplingSettings
from grpo_r1.engines.build import ENGINES, EngineSettings, build_engine, check_engine, engine_from_recipe
from grpo_r1.engines.rollout import EngineRollout, make_rollout_func
from grpo_r1.engines.timing import StepTimer, install_step_timer

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineRollout",
    "EngineSettings",
    "SamplingSettings",
    "StepTimer",
    "build_engine",
    "check_engine",
    "engine_from_recipe",
    "install_step_timer",
    "make_rollout_func",
]
