"""Every use of TRL 1.14.2's private GRPOTrainer parts, in one file.

grpo_r1 builds on GRPOTrainer's public hooks (rollout_func, callbacks, reward functions) where
they suffice. Where they do not, it touches the trainer's private attributes, and only here,
each behind a function that says what it is for. Upgrading TRL means checking this file
against the new trainer (trl/trainer/grpo_trainer.py) and nothing else:

    _generate, _generate_and_score_completions, _calculate_rewards,
    _get_per_token_logps_and_entropies        the phases of a step (watch_phases)
    _generate_and_score_completions            also replaced whole, for dynamic sampling, with the
                                               entries of the batch it returns (GENERATION_BATCH_*)
    _calculate_rewards                         also recorded, for dynamic sampling (record_rewards)
    _metrics                                   the per-step metrics TRL averages and logs
    _logs                                      the latest generation batch's prompts, completions, rewards
    _step, _buffered_inputs                    GRPO's micro-step and its unused completions (checkpoints)
    _get_train_sampler                         the sampler that orders the prompts
    trainer.utils.RepeatSampler                that sampler's class, rebuilt for a control (question_sampler)
    _prepare_inputs, generation_config,
    generation_kwargs                          one generation round on demand (the preflight)
    use_vllm, vllm_generation, _last_loaded_step,
    vllm_importance_sampling_correction        TRL's engine-logprob path, turned on for our engines
    _load_optimizer_and_scheduler              (transformers' Trainer) a resume on several CPU processes
    peft_config["ref"]                         TRL's frozen copy of the adapter for the reference forward
    _full_logits_logps, temperature,
    _entropy_bonus_enabled, model_kwarg_keys   the padded scoring forward, replaced by a packed one
                                               (model.padding_free, true or shared_prompt)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch

# The step's phases, each a method of GRPOTrainer that runs once (or, for logprobs, a few times)
# per step: a name of ours -> TRL's method.
PHASE_METHODS = {
    "generation": "_generate",  # sampling and decoding, any engine
    "generation_and_scoring": "_generate_and_score_completions",  # the above, rewards, logprobs, advantages
    "rewards": "_calculate_rewards",  # every reward function
    "logprobs": "_get_per_token_logps_and_entropies",  # a forward pass; with grad: the policy's own
}

_LISTENERS = "_grpo_r1_phase_listeners"


class PhaseListener(Protocol):
    """Told when a phase of the step starts and ends (`grad`: whether autograd records it)."""

    def phase_started(self, phase: str, grad: bool) -> None: ...

    def phase_ended(self, phase: str, grad: bool) -> None: ...


def watch_phases(trainer: Any, listener: PhaseListener) -> None:
    """Call `listener` around each phase method of this trainer (the instance only; TRL's class is untouched).

    The methods are wrapped once per trainer, however many listeners are added.
    """
    listeners = getattr(trainer, _LISTENERS, None)
    if listeners is None:
        listeners = []
        setattr(trainer, _LISTENERS, listeners)
        for phase, name in PHASE_METHODS.items():
            setattr(trainer, name, _announcing(getattr(trainer, name), phase, listeners))
    listeners.append(listener)


def _announcing(method: Callable[..., Any], phase: str, listeners: list[PhaseListener]) -> Callable[..., Any]:
    @functools.wraps(method)
    def announced(*args: Any, **kwargs: Any) -> Any:
        grad = torch.is_grad_enabled()
        for listener in listeners:
            listener.phase_started(phase, grad)
        try:
            return method(*args, **kwargs)
        finally:
            for listener in listeners:
                listener.phase_ended(phase, grad)

    return announced


# The entries of the generation batch GRPOTrainer 1.14.2's _generate_and_score_completions returns for
# text prompts: one row per completion (prompts padded on the left, the rest on the right), and the
# batch's loss-token count.
GENERATION_BATCH_LEFT_PADDED = ("prompt_ids", "prompt_mask")
GENERATION_BATCH_RIGHT_PADDED = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                                 "sampling_per_token_logps", "importance_sampling_ratio")
GENERATION_BATCH_PER_ROW = ("advantages",)
GENERATION_BATCH_TOKEN_COUNT = "num_items_in_batch"


def record_rewards(trainer: Any) -> Callable[[], torch.Tensor]:
    """Keep the latest result of the trainer's reward calculation; returns its getter: a tensor of
    one row per completion of the round (all processes) and one column per reward function, NaN
    where a function returned None. Install before the step timer's phase watch."""
    calculate = trainer._calculate_rewards
    latest: list[torch.Tensor] = []

    def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
        rewards = calculate(*args, **kwargs)
        latest[:] = [rewards]
        return rewards

    trainer._calculate_rewards = recorded
    return lambda: latest[0]


def wrap_generate_and_score(trainer: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Make this trainer's generation round (sampling, rewards, log-probabilities, advantages; one
    call per round, the list of input rows in, the batch to train on out) `wrap(TRL's method)`."""
    trainer._generate_and_score_completions = wrap(trainer._generate_and_score_completions)


def add_step_metric(trainer: Any, key: str, value: float) -> None:
    """Add one value to the metrics GRPOTrainer averages over each logging interval and then logs."""
    trainer._metrics["train"][key].append(value)


def latest_batch(trainer: Any) -> dict[str, Any]:
    """The latest generation batch as GRPOTrainer keeps it for its own completion logging:
    "prompt", "completion", "rewards" (name -> values), "advantages"."""
    return trainer._logs


def micro_step(trainer: Any) -> int:
    """GRPO's micro-step counter, which decides when the next generation round happens."""
    return trainer._step


def set_micro_step(trainer: Any, step: int) -> None:
    trainer._step = step


def buffered_inputs(trainer: Any) -> Any:
    """The generated completions the next micro-steps still train on (None between rounds)."""
    return trainer._buffered_inputs


def set_buffered_inputs(trainer: Any, inputs: Any) -> None:
    trainer._buffered_inputs = inputs


def wrap_train_sampler(trainer: Any, wrap: Callable[[Any], Any]) -> None:
    """Make the trainer's prompt sampler `wrap(TRL's sampler)`."""
    make_sampler = trainer._get_train_sampler

    def wrapped_sampler(*args: Any, **kwargs: Any) -> Any:
        return wrap(make_sampler(*args, **kwargs))

    trainer._get_train_sampler = wrapped_sampler


def question_sampler(dataset_size: int, questions_per_round: int, *, shuffle: bool, seed: int) -> Any:
    """TRL's prompt sampler as GRPOTrainer builds it (`_get_train_sampler`), yielding each round's
    distinct questions once: the same permutation of the rows per epoch (TRL seeds it once, so each
    new iteration draws the next permutation), cut into whole rounds of `questions_per_round`."""
    from trl.trainer.utils import RepeatSampler

    return RepeatSampler(range(dataset_size), mini_repeat_count=1, batch_size=questions_per_round, repeat_count=1,
                         shuffle=shuffle, seed=seed)


def generate_batch(trainer: Any, rows: list[dict[str, Any]]) -> Any:
    """One generation round on `rows` (one entry per completion) and its scoring: the batch a step trains on."""
    return trainer._prepare_inputs(rows)


def force_completion_length(trainer: Any, tokens: int) -> None:
    """Make TRL's own generate write exactly `tokens` new tokens per completion (end tokens suppressed until then)."""
    trainer.generation_config.min_new_tokens = tokens
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):
        trainer.generation_kwargs["min_new_tokens"] = tokens


def prepare_for_step(trainer: Any) -> None:
    """What Trainer.train sets up before its first step and a step outside train() needs:
    train mode, gradient accumulation count, gradient checkpointing."""
    args = trainer.args
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    if args.gradient_checkpointing:
        options = dict(args.gradient_checkpointing_kwargs or {})
        every_n_layers = options.pop("every_n_layers", 1)
        offload = options.pop("offload", False)
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options or None,
                                                    every_n_layers=every_n_layers, offload=offload)


def started_trl_vllm(trainer: Any, hook_type: type) -> bool:
    """Whether TRL started a vLLM of its own (GRPOConfig.use_vllm), not our stand-in `hook_type`."""
    return (bool(getattr(trainer, "use_vllm", False))
            and not isinstance(getattr(trainer, "vllm_generation", None), hook_type))


def uses_tools(trainer: Any) -> bool:
    """Whether the trainer runs tool calls or environments (which our engines cannot)."""
    return bool(getattr(trainer, "tools", None) or getattr(trainer, "environment_factories", None))


def wants_importance_sampling(trainer: Any) -> bool:
    """GRPOConfig.vllm_importance_sampling_correction, as the trainer holds it."""
    return bool(getattr(trainer, "vllm_importance_sampling_correction", False))


def use_engine_logprobs(trainer: Any, sync_hook: Any) -> None:
    """Turn on TRL's engine-logprob path (importance-sampling correction, sampling/* metrics) for a
    rollout_func engine: TRL reads the returned logprobs only with use_vllm set, and then calls
    `vllm_generation.sync_weights()` when global_step changes; `sync_hook` answers that call."""
    trainer.use_vllm = True
    trainer.vllm_generation = sync_hook
    trainer._last_loaded_step = trainer.state.global_step  # the hook syncs right after this


REFERENCE_ADAPTER = "ref"


def drop_fresh_reference_adapter(trainer: Any) -> bool:
    """Delete TRL's frozen "ref" copy of the adapter when the adapter is freshly initialized.

    Handed a PeftModel with beta > 0, GRPOTrainer 1.14.2 copies the adapter into a frozen "ref"
    adapter and runs the reference forward through it (`use_adapter(model, "ref")`), because a
    pretrained adapter is not the base model. A fresh LoRA adapter (every lora_B zero, as PEFT
    initializes it) adds exactly nothing, so its copy is the base model: without "ref", TRL runs
    the reference forward with adapters disabled, the same numbers without the LoRA products
    (7 small matmul pairs a layer) and without the copy's memory. An adapter trained before the
    trainer was built (a cold start) keeps its copy. Returns whether the copy was deleted.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = getattr(model, "peft_config", None) or {}
    if REFERENCE_ADAPTER not in config:
        return False
    active = model.active_adapter
    lora_b = [param for name, param in model.named_parameters() if ".lora_B." in name and f".{active}." in name]
    # Only a LoRA adapter whose every B is zero, and nothing else trained beside it, adds nothing.
    fresh = bool(lora_b) and all(not param.any() for param in lora_b) and not config[active].modules_to_save
    if fresh:
        model.delete_adapter(REFERENCE_ADAPTER)  # "ref" is never the active one: the trained adapter stays active
    return fresh


def load_resumed_optimizer_on_the_cpu(trainer: Any) -> None:
    """Resume the optimizer and LR scheduler of a run of several CPU processes (gloo).

    transformers 5.17 loads a checkpoint's optimizer.pt with `map_location=args.device` when there
    is more than one process; on CPU processes accelerate's device is `cpu:0`, which torch.load
    cannot map to ("don't know how to restore data location ... (tagged with cpu:0)"), so every
    such resume failed. Installed only for that case: the states are loaded onto the CPU, as
    transformers does for one process. Anything else (no checkpoint, missing files) goes to
    transformers' own method.
    """
    original = trainer._load_optimizer_and_scheduler

    def load(checkpoint: str | None) -> None:
        optimizer_file = os.path.join(checkpoint, "optimizer.pt") if checkpoint else ""
        scheduler_file = os.path.join(checkpoint, "scheduler.pt") if checkpoint else ""
        if not (os.path.isfile(optimizer_file) and os.path.isfile(scheduler_file)):
            return original(checkpoint)
        trainer.optimizer.load_state_dict(torch.load(optimizer_file, map_location="cpu", weights_only=True))
        trainer.lr_scheduler.load_state_dict(torch.load(scheduler_file, map_location="cpu", weights_only=True))
        return None

    trainer._load_optimizer_and_scheduler = load


def pack_scoring_forwards(trainer: Any, share_prompts: bool = False) -> None:
    """Make the trainer's scoring forwards (the policy's with its backward, the old and the reference
    log-probabilities) run packed, without padding (grpo_r1.trainer.packing), in the same row chunks;
    with `share_prompts`, each prompt once per chunk for the completions that share it, on a GPU through
    FlexAttention with a block mask for an SDPA model (grpo_r1.trainer.packing.use_flex_attention).

    Only TRL's full-logits path is replaced (not Liger's chunked loss), and only for text: a call with
    images or an MoE auxiliary loss goes to TRL's own."""
    from grpo_r1.trainer.packing import FLEX_PACKED, check_attention, packed_logps, use_flex_attention

    attention = trainer.model.config._attn_implementation
    if share_prompts:
        check_attention(attention)
    if share_prompts and attention == "sdpa" and trainer.model.device.type == "cuda":
        dtype = (torch.bfloat16 if trainer.args.bf16 else torch.float16 if trainer.args.fp16
                 else trainer.model.get_input_embeddings().weight.dtype)
        use_flex_attention(trainer.model, dtype)
        attention = FLEX_PACKED
    padded = trainer._full_logits_logps

    @functools.wraps(padded)
    def packed(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
               batch_size: int | None = None, compute_entropy: bool = False, compute_aux_loss: bool = False,
               **multimodal: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if compute_aux_loss or any(value is not None for value in multimodal.values()):
            return padded(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                          compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        chunk = batch_size or input_ids.shape[0]
        parts = [packed_logps(model, input_ids[i:i + chunk], attention_mask[i:i + chunk], logits_to_keep,
                              temperature=trainer.temperature, share_prompts=share_prompts, attention=attention,
                              compute_entropy=compute_entropy,
                              entropy_requires_grad=trainer._entropy_bonus_enabled,
                              takes_logits_to_keep="logits_to_keep" in trainer.model_kwarg_keys)
                 for i in range(0, input_ids.shape[0], chunk)]
        logps = torch.cat([p[0] for p in parts])
        entropies = torch.cat([p[1] for p in parts]) if compute_entropy else None
        return logps, entropies, None

    trainer._full_logits_logps = packed
