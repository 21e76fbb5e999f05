"""Load the base model and tokenizer, and wrap the model in the LoRA adapter that GRPO trains.

Two backends:
    transformers  AutoModelForCausalLM + PEFT LoRA (optional 4-bit QLoRA through bitsandbytes)
    unsloth       Unsloth's FastLanguageModel + get_peft_model (needs a CUDA GPU); with
                  `generation.engine: unsloth` it also starts Unsloth's shared-weight vLLM

`check_model_can_load` runs before anything heavy, so a run that cannot work here stops at once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_r1.errors import ModelError
from grpo_r1.launch import Launch
from grpo_r1.model.builtin import builtin_model_path, is_builtin
from grpo_r1.model.templates import use_chat_template
from grpo_r1.recipe import ModelConfig, Recipe


@dataclass
class LoadedModel:
    model: Any  # a peft.PeftModel
    tokenizer: Any
    base_path: str  # local folder or hub id of the base weights (engines load it too)
    dtype: torch.dtype


def check_model_can_load(recipe: Recipe) -> None:
    """Fail now, with the fix, if the recipe's model setup cannot run on this machine."""
    cfg = recipe.model
    has_cuda = torch.cuda.is_available()
    if cfg.backend == "unsloth":
        if not has_cuda:
            raise ModelError("model.backend 'unsloth' needs a CUDA GPU and none is visible; "
                             "on this machine use model.backend=transformers (and generation.engine=hf or vllm)")
        if importlib.util.find_spec("unsloth") is None:
            raise ModelError("model.backend 'unsloth' needs the unsloth package; "
                             "install it with: pip install 'grpo_r1[gpu]'")
    if cfg.load_in_4bit:
        if not has_cuda:
            raise ModelError("model.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit); "
                             "set model.load_in_4bit=false on this machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("model.load_in_4bit needs bitsandbytes; install it with: pip install 'grpo_r1[gpu]'")
    if cfg.dtype in ("bfloat16", "float16") and not has_cuda:
        raise ModelError(f"model.dtype {cfg.dtype!r} trains slowly or not at all on a CPU; "
                         "use model.dtype=float32 or auto")
    if cfg.init == "random":
        from grpo_r1.model.architectures import architecture_config

        architecture_config(cfg.architecture)  # an unknown name fails here
    elif not is_builtin(cfg.name_or_path):
        path = Path(cfg.name_or_path).expanduser()
        looks_local = cfg.name_or_path.startswith((".", "/", "~")) or cfg.name_or_path.count("/") > 1
        if looks_local and not path.is_dir():
            raise ModelError(f"model.name_or_path {cfg.name_or_path!r} is not a folder; "
                             "give a Hugging Face model folder, a hub id or a built-in name ('smollm2-135m')")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelError(f"model.name_or_path {cfg.name_or_path!r} is a folder without config.json, "
                             f"not a Hugging Face model; give a model folder (config.json, weights, tokenizer), "
                             f"a hub id or a built-in name ('smollm2-135m')")
    if cfg.tokenizer:
        looks_local = cfg.tokenizer.startswith((".", "/", "~")) or cfg.tokenizer.count("/") > 1
        if looks_local and not Path(cfg.tokenizer).expanduser().is_dir():
            raise ModelError(f"model.tokenizer {cfg.tokenizer!r} is not a folder; "
                             f"give a Hugging Face tokenizer folder or hub id, "
                             f"or remove model.tokenizer to use the model's own")


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype for model.dtype; "auto" picks bfloat16/float16 on a GPU, float32 on CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def resolve_model_path(name_or_path: str) -> str:
    """A built-in model's materialised folder, or the name unchanged (folder or hub id)."""
    return str(builtin_model_path(name_or_path)) if is_builtin(name_or_path) else name_or_path


def model_path(cfg: ModelConfig) -> str:
    """Where the recipe's base weights are: a random-init folder (made on first use) for
    `model.init: random`, else `resolve_model_path(model.name_or_path)`."""
    if cfg.init == "random":
        from grpo_r1.model.architectures import random_model_path

        return str(random_model_path(cfg.architecture, cfg.tokenizer, resolve_dtype(cfg.dtype)))
    return resolve_model_path(cfg.name_or_path)


def load_model(recipe: Recipe, launch: Launch | None = None) -> LoadedModel:
    """Load the base model with a fresh LoRA adapter, and its tokenizer, as the recipe says.

    `launch`: this process's place under accelerate launch (None: a single process); see
    `load_base_model` for what changes under DDP, FSDP and DeepSpeed.
    """
    check_model_can_load(recipe)
    path = model_path(recipe.model)
    dtype = resolve_dtype(recipe.model.dtype)
    if recipe.model.backend == "unsloth":
        model, tokenizer = _load_unsloth(recipe, path, dtype)
    else:
        model, tokenizer = _load_transformers(recipe, launch or Launch())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, base_path=path, dtype=dtype)


def load_adapter_weights(model: Any, weights: str | Path) -> None:
    """Put the LoRA weights of `weights` (an adapter_model.safetensors) into `model`'s active adapter.

    Raises ModelError when the file lacks any of the adapter's LoRA weights (another rank, other
    target modules): loading part of an adapter would train from a silently different start.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name=model.active_adapter)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{model.active_adapter}." in k]
    if missing:
        raise ModelError(f"{weights} lacks {len(missing)} of the adapter's weights, e.g. {missing[0]}; it was saved "
                         f"with other lora settings (lora.r, lora.target_modules) than this recipe's")


def load_base_model(recipe: Recipe, launch: Launch | None = None) -> tuple[Any, Any, str]:
    """The base model through transformers (no adapter, 4-bit when asked), its tokenizer, and its path.

    The tokenizer gets a pad token (its EOS) when it has none. Under accelerate launch
    (`launch`), a 4-bit model goes to this process's own GPU, and where the parameters are
    sharded (FSDP, ZeRO-3) its packed 4-bit weights are stored in the model's dtype
    (bnb_4bit_quant_storage), which FSDP and ZeRO-3 can shard; a non-4-bit model is loaded on
    the CPU and accelerate places or shards it when the trainer starts.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = recipe.model
    launch = launch or Launch()
    path = model_path(cfg)
    dtype = resolve_dtype(cfg.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        # Sharded, the packed 4-bit weights must be a float dtype, the model's own (bitsandbytes' default is uint8).
        storage = {"bnb_4bit_quant_storage": dtype} if launch.shards_parameters else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
            **storage,
        )
        if launch.is_distributed:
            kwargs["device_map"] = {"": launch.local_rank}  # bitsandbytes quantizes on the GPU it loads to
    tokenizer = _from_pretrained(AutoTokenizer, cfg.tokenizer or path,
                                 "model.tokenizer" if cfg.tokenizer else "model.name_or_path",
                                 trust_remote_code=cfg.trust_remote_code)
    use_chat_template(tokenizer, recipe)  # before the weights: a tokenizer that cannot format the prompts is refused
    model = _from_pretrained(AutoModelForCausalLM, path, "model.name_or_path", **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path


def prepare_4bit_model(model: Any, *, dtype: torch.dtype, gradient_checkpointing: bool) -> Any:
    """PEFT's k-bit preparation of a bitsandbytes 4-bit model; with a bf16 compute dtype, the parameters it
    upcast go back to bf16, so QLoRA trains with the numerics of a bf16 LoRA over a 4-bit base.

    `prepare_model_for_kbit_training` freezes the model, readies gradient checkpointing and casts every
    bf16/fp16 parameter that is not 4-bit to float32, for fp16 training's sake. That makes the
    embedding's output, and with it the residual stream and the norms, float32 under autocast, where a
    bf16 LoRA (and Unsloth's QLoRA) keep them bf16. It also costs memory: for Qwen2.5-7B the float32
    embedding and lm_head alone take 2.2 GB more, the activations kept for the backward are float32,
    autocast copies the lm_head to bf16 for every product, and the decoder needs bf16 copies of the
    tables (5.4 GiB less allocated without it, docs/benchmarks.md). Under bf16 the parameters that were
    bf16 before it are put back (frozen, their values unchanged); those a model keeps in float32 on
    purpose stay. Under fp16 PEFT's float32 stays."""
    from peft import prepare_model_for_kbit_training

    was_bf16 = {name for name, param in model.named_parameters() if param.dtype == torch.bfloat16}
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if dtype == torch.bfloat16:
        for name, param in model.named_parameters():
            if name in was_bf16 and param.dtype == torch.float32:
                param.data = param.data.to(dtype)
    return model


def _load_transformers(recipe: Recipe, launch: Launch) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model

    cfg = recipe.model
    model, tokenizer, _ = load_base_model(recipe, launch)
    if cfg.load_in_4bit and not launch.shards_parameters:
        # Not when sharded: it casts norms and embeddings to float32 beside the bf16-stored 4-bit
        # weights (TRL skips it for sharded QLoRA too). Gradient checkpointing is then the trainer's.
        model = prepare_4bit_model(model, dtype=resolve_dtype(cfg.dtype),
                                   gradient_checkpointing=bool(cfg.gradient_checkpointing))
    lora = recipe.lora
    _check_target_modules(model, lora.target_modules)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    # Under ZeRO-3 the LoRA weights keep the base model's dtype: it gathers a unit's parameters in
    # one dtype (bf16 base + fp32 LoRA fails at the first optimizer step, TRL issue 6089). FSDP2
    # only needs the trainable ones to agree, which the float32 LoRA weights do.
    zero3 = launch.sharding == "deepspeed" and launch.shards_parameters
    return get_peft_model(model, peft_config, autocast_adapter_dtype=not zero3), tokenizer


def _load_unsloth(recipe: Recipe, path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    cfg, lora, gen = recipe.model, recipe.lora, recipe.generation
    fast_inference = gen.engine == "unsloth"
    kwargs: dict[str, Any] = {
        "model_name": path,
        "max_seq_length": cfg.max_seq_length,
        "load_in_4bit": cfg.load_in_4bit,
        "dtype": dtype,
        "fast_inference": fast_inference,
    }
    if fast_inference:
        kwargs["max_lora_rank"] = lora.r
        kwargs["gpu_memory_utilization"] = gen.gpu_memory_utilization
    if cfg.tokenizer:
        kwargs["tokenizer_name"] = cfg.tokenizer
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(**kwargs)
    except OSError as e:
        raise ModelError(f"model.name_or_path {path!r} could not be loaded by Unsloth: "
                         f"{str(e).splitlines()[0]}") from None
    use_chat_template(tokenizer, recipe)
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_gradient_checkpointing=("unsloth" if cfg.gradient_checkpointing == "unsloth"
                                    else bool(cfg.gradient_checkpointing)),
        random_state=recipe.run.seed,
    )
    return model, tokenizer


def _from_pretrained(cls: Any, path: str, key: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: a folder transformers cannot make a model or tokenizer of
        first = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{key} {path!r} could not be loaded ({first}); give a local Hugging Face folder (download one where "
            f"there is network: hf download <hub id> --local-dir <folder>), a hub id reachable from this machine, "
            f"or the built-in 'smollm2-135m'"
        ) from None


def _check_target_modules(model: Any, targets: list[str]) -> None:
    """Every lora.target_modules entry must name at least one linear layer of the model."""
    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")}
    missing = [t for t in targets if t not in linear_names]
    if missing:
        raise ModelError(
            f"lora.target_modules {missing} name no layer of this model; its linear layers are "
            f"{sorted(linear_names)}"
        )
