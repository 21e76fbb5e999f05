"""Preflight: one GRPO step at the worst case the recipe allows, before the run folder exists.

A single-GPU run that runs out of memory at step 120, when its longest sample arrives, has
lost hours. The preflight does, before step 1, the work of one step at the largest shape the
recipe allows, so that an out-of-memory shows now:

    prompts      the dataset's longest prompt (in tokens, chat template applied) in every row of
                 one generation round (training.per_device_train_batch_size x steps_per_generation)
    generation   generation.max_completion_length new tokens for every completion: with the hf
                 engine TRL's own generate with the end tokens suppressed (min_new_tokens); the
                 vllm and unsloth engines reserve their memory when they start (a fixed share,
                 generation.gpu_memory_utilization), so there completions of that length stand in
                 for theirs and the trainer's phases below run beside that share
    scoring      every reward function once on those completions (a reward that raises, returns
                 the wrong number of values or NaN fails here, with grpo_r1.rewards' message),
                 and the reference model's forward pass (TRL's frozen copy of the adapter)
    training     the policy forward and backward pass of one micro-batch

It runs them through a throwaway GRPOTrainer built with the run's own GRPOConfig, so the batch
layout is TRL's. On a CUDA GPU the optimizer state the first real step allocates is reserved
too. No optimizer step is taken and the gradients are dropped afterwards: the model's weights
are left exactly as they were.

An out-of-memory becomes a PreflightError that names the phase that ran out, the shape, the
peak memory against the cap, a breakdown (weights, optimizer state, KV cache, activations and
gradients) and the recipe settings to lower. `run.preflight`: "auto" (on when a CUDA GPU is
used), true or false.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_r1.errors import GrpoR1Error, RewardError
from grpo_r1.recipe import Recipe

GENERATION = "generation"
REFERENCE = "reference forward"
REWARDS = "reward functions"
POLICY_FORWARD = "policy forward"
BACKWARD = "backward"
SETUP = "setup"


class PreflightError(GrpoR1Error):
    """The worst-case step does not fit: the message names the phase, the figures and the settings to lower."""


@dataclass
class WorstCase:
    """The largest step the recipe allows."""

    row: int  # the dataset row with the longest prompt
    prompt_tokens: int
    completion_tokens: int  # generation.max_completion_length
    generation_batch: int  # completions sampled in one generation round
    micro_batch: int  # completions in one forward + backward

    def describe(self, phase: str | None = None) -> str:
        """The shape in words; for a training phase, the micro-batch it ran."""
        if phase in (POLICY_FORWARD, BACKWARD):
            rows = f"{self.micro_batch} completions in the forward+backward (of {self.generation_batch} per round)"
        else:
            rows = f"{self.generation_batch} completions per generation round, {self.micro_batch} per forward+backward"
        return (f"{rows}, each {self.prompt_tokens}+{self.completion_tokens} tokens: the longest prompt and "
                f"generation.max_completion_length={self.completion_tokens}")


@dataclass
class PreflightReport:
    """What a passed preflight ran and the memory it took."""

    worst_case: WorstCase
    phases: list[str]
    seconds: float
    peak_bytes: int | None
    cap_bytes: int | None
    memory_kind: str  # "GPU" or "CPU, process RSS"

    def describe(self) -> str:
        memory = (f"; peak {_size(self.peak_bytes)} of {_size(self.cap_bytes)} ({self.memory_kind})"
                  if self.peak_bytes is not None and self.cap_bytes is not None else "")
        return f"one step at the worst case ({self.worst_case.describe()}) in {self.seconds:.1f} s{memory}"


def preflight_enabled(recipe: Recipe) -> bool:
    """Whether `run.preflight` asks for the preflight here ("auto": when one process trains on a CUDA GPU;
    under accelerate launch the model is sharded or replicated only later, so one GPU's step would mislead)."""
    setting = recipe.run.preflight
    if setting == "auto":
        return torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1
    return bool(setting)


def run_preflight(recipe: Recipe, loaded: Any, dataset: Any, reward_funcs: Sequence[Callable[..., Any]]) -> PreflightReport | None:
    """The preflight when `run.preflight` asks for it (None otherwise); prints one line when it passes.

    `loaded` is grpo_r1.model's LoadedModel, `dataset` the training questions, `reward_funcs` the
    run's reward functions. Raises PreflightError on an out-of-memory and a reward's RewardError.
    """
    if not preflight_enabled(recipe):
        return None
    report = preflight_step(recipe, loaded, dataset, reward_funcs)
    print(f"grpo_r1: preflight passed: {report.describe()}", flush=True)
    return report


def preflight_step(recipe: Recipe, loaded: Any, dataset: Any, reward_funcs: Sequence[Callable[..., Any]]) -> PreflightReport:
    """Run one GRPO step at the recipe's worst case and leave the model as it was; see the module doc."""
    from trl import GRPOConfig, GRPOTrainer

    from grpo_r1.engines.rollout import longest_prompt
    from grpo_r1.rewards import guard_reward
    from grpo_r1.train import grpo_config_kwargs

    model, tokenizer = loaded.model, loaded.tokenizer
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo_r1_preflight_") as scratch:
        kwargs = grpo_config_kwargs(recipe, Path(scratch), "preflight", loaded.dtype)
        kwargs.update(report_to="none", save_strategy="no")
        args = GRPOConfig(**kwargs)
        row, prompt_tokens = longest_prompt(dataset, tokenizer)
        worst = WorstCase(row=row, prompt_tokens=prompt_tokens, completion_tokens=recipe.generation.max_completion_length,
                          generation_batch=args.per_device_train_batch_size * args.steps_per_generation,
                          micro_batch=args.per_device_train_batch_size)
        meter = _Memory(torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and not args.use_cpu
                        else torch.device("cpu"))
        tracker = _PhaseTracker()
        state = _ModelState(model)
        rollout = None if recipe.generation.engine == "hf" else _full_length_rollout(tokenizer, worst.completion_tokens)
        trainer = reserve = decoder_hold = batch = loss = None
        try:
            with meter.capped(_engine_share(recipe)):
                reserve = meter.reserve(_optimizer_state_bytes(model, str(args.optim)), paged="paged" in str(args.optim))
                decoder_hold = meter.reserve(_decoder_bytes(recipe, model, worst), paged=False)
                trainer = GRPOTrainer(
                    model=model,
                    reward_funcs=[guard_reward(func) for func in reward_funcs],
                    args=args,
                    train_dataset=dataset.select([row]),
                    processing_class=tokenizer,
                    rollout_func=rollout,
                )
                _force_full_length(trainer, worst.completion_tokens)
                tracker.attach(trainer)
                _prepare_like_train(trainer, args)
                with trainer.accelerator.autocast():  # what accelerator.prepare wraps the model's forward in
                    batch = trainer._prepare_inputs([dataset[row]] * worst.generation_batch)
                    tracker.enter(POLICY_FORWARD)
                    with trainer.compute_loss_context_manager():
                        loss = trainer.compute_loss(trainer.model, batch)
                tracker.enter(BACKWARD)
                trainer.accelerator.backward(loss)
                tracker.enter("done")
        except RewardError as exc:
            raise RewardError(f"{exc} (found by the preflight, on completions of the longest prompt with "
                              f"generation.max_completion_length={worst.completion_tokens} tokens)") from None
        except Exception as exc:  # only an out-of-memory is turned into a message here
            if not is_out_of_memory(exc):
                raise
            peak, cap = meter.peak(), meter.cap()
            message = oom_message(recipe, worst, tracker.phase, peak, cap, meter.kind, _torch_detail(exc),
                                  _breakdown(model, worst, loaded.dtype, reserve.numel() if reserve is not None else None,
                                             decoder_hold.numel() if decoder_hold is not None else None,
                                             peak, tracker.phase))
            raise PreflightError(message) from None
        finally:
            del trainer, reserve, decoder_hold, batch, loss
            state.restore(model)
            gc.collect()
            meter.release()
        peak, cap = meter.peak(), meter.cap()
    return PreflightReport(worst_case=worst, phases=tracker.phases, seconds=time.perf_counter() - started,
                           peak_bytes=peak, cap_bytes=cap, memory_kind=meter.kind)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or a RuntimeError that says it ran out of memory (older CUDA paths, bitsandbytes)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def oom_message(recipe: Recipe, worst: WorstCase, phase: str, peak: int | None, cap: int | None, memory_kind: str,
                detail: str, breakdown: Sequence[str]) -> str:
    """The one-line PreflightError message for an out-of-memory in `phase`."""
    usage = (f"peak {_size(peak)} of a {_size(cap)} cap ({memory_kind})" if peak is not None and cap is not None
             else f"peak unknown ({memory_kind})")
    parts = ", ".join(breakdown)
    return (
        f"preflight ran out of memory in the {phase} phase, at the worst case this recipe allows ({worst.describe(phase)}): "
        f"{usage}{'; ' + detail if detail else ''}; {parts}; to fit, {settings_to_lower(recipe, phase)}"
    )


def settings_to_lower(recipe: Recipe, phase: str) -> str:
    """The recipe settings that shrink the step, as `section.key` with their values, most relevant first."""
    from grpo_r1.recipe import TRAINING_DEFAULTS

    gen, model = recipe.generation, recipe.model
    training = {**TRAINING_DEFAULTS, **recipe.training}
    lower = [
        f"generation.max_completion_length (now {gen.max_completion_length})",
        (f"training.per_device_train_batch_size (now {training['per_device_train_batch_size']}; raise "
         f"training.gradient_accumulation_steps to keep the batch)"),
        f"generation.num_generations (now {gen.num_generations})",
    ]
    switch = []
    if model.gradient_checkpointing is False:
        switch.append("model.gradient_checkpointing=true")
    if not model.load_in_4bit:
        switch.append("model.load_in_4bit=true")
    if phase in (POLICY_FORWARD, BACKWARD):
        lower.insert(0, lower.pop(1))  # the micro-batch decides the activations
    text = "lower " + ", ".join(lower)
    if switch:
        text = (f"set {', '.join(switch)}, or " + text) if phase in (POLICY_FORWARD, BACKWARD) else text + f", or set {', '.join(switch)}"
    if gen.engine in ("vllm", "unsloth"):
        text += (f"; the {gen.engine} engine holds generation.gpu_memory_utilization={gen.gpu_memory_utilization} of "
                 f"the GPU: lower it to leave the trainer more")
    return text


# ----------------------------------------------------------------------------- internals


class _PhaseTracker:
    """Which phase of the step is running, set by wrappers on the throwaway trainer's methods."""

    def __init__(self) -> None:
        self.phase = SETUP
        self.phases: list[str] = []

    def enter(self, phase: str) -> None:
        self.phase = phase
        if phase not in self.phases and phase != "done":
            self.phases.append(phase)

    def attach(self, trainer: Any) -> None:
        self._wrap(trainer, "_generate", lambda: GENERATION)
        self._wrap(trainer, "_calculate_rewards", lambda: REWARDS)
        # no-grad calls are the reference (and old-policy) logprobs; with grad, the policy's own forward
        self._wrap(trainer, "_get_per_token_logps_and_entropies",
                   lambda: POLICY_FORWARD if torch.is_grad_enabled() else REFERENCE)

    def _wrap(self, trainer: Any, name: str, phase: Callable[[], str]) -> None:
        method = getattr(trainer, name)

        @functools.wraps(method)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            self.enter(phase())
            return method(*args, **kwargs)

        setattr(trainer, name, tracked)


class _ModelState:
    """What the throwaway trainer may change on the model, to put back afterwards."""

    def __init__(self, model: Any) -> None:
        self.training = model.training
        self.adapters = set(getattr(model, "peft_config", {}) or {})
        self.active = getattr(model, "active_adapter", None)

    def restore(self, model: Any) -> None:
        model.zero_grad(set_to_none=True)
        for name in set(getattr(model, "peft_config", {}) or {}) - self.adapters:
            model.delete_adapter(name)  # TRL's frozen "ref" copy; the real trainer makes its own
        if self.active is not None and getattr(model, "active_adapter", None) != self.active:
            model.set_adapter(self.active)
        model.train(self.training)


class _Memory:
    """Peak and cap of the memory the step uses: the CUDA allocator's, or the process's RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind = "GPU" if self.cuda else "CPU, process RSS"
        self._available: int | None = None
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            free, _ = torch.cuda.mem_get_info(device)  # less than the total when another allocator (vLLM) holds some
            self._available = int(torch.cuda.memory_reserved(device)) + int(free)

    def peak(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux

    def cap(self) -> int | None:
        if self.cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            return min(int(total * self._current_fraction()), self._available or total)
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None

    def _current_fraction(self) -> float:
        try:
            return float(torch.cuda.get_per_process_memory_fraction(self.device))
        except (AttributeError, RuntimeError):
            return 1.0

    @contextmanager
    def capped(self, engine_share: float) -> Iterator[None]:
        """Leave a generation engine's share of the GPU free while the step runs (a vLLM started later takes it)."""
        if not self.cuda or engine_share <= 0:
            yield
            return
        before = self._current_fraction()
        torch.cuda.set_per_process_memory_fraction(max(0.05, before - engine_share), self.device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(before, self.device)

    def reserve(self, nbytes: int, *, paged: bool) -> Any:
        """Hold `nbytes` on the GPU for the optimizer state (paged optimizers can move theirs to the CPU)."""
        if not self.cuda or paged or nbytes <= 0:
            return None
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def _engine_share(recipe: Recipe) -> float:
    """The GPU fraction a vllm engine takes when it starts after the preflight (unsloth's already holds its own)."""
    return recipe.generation.gpu_memory_utilization if recipe.generation.engine == "vllm" else 0.0


def _prepare_like_train(trainer: Any, args: Any) -> None:
    """What Trainer.train sets up before its first step and the preflight needs: train mode, checkpointing."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    if args.gradient_checkpointing:
        options = dict(args.gradient_checkpointing_kwargs or {})
        every_n_layers = options.pop("every_n_layers", 1)
        offload = options.pop("offload", False)
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options or None,
                                                    every_n_layers=every_n_layers, offload=offload)


def _force_full_length(trainer: Any, tokens: int) -> None:
    """Make TRL's generate write exactly `tokens` new tokens per completion (its end tokens suppressed until then)."""
    trainer.generation_config.min_new_tokens = tokens
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):
        trainer.generation_kwargs["min_new_tokens"] = tokens


def _full_length_rollout(tokenizer: Any, tokens: int) -> Callable[[list, Any], dict[str, list]]:
    """A TRL rollout_func that answers every prompt with `tokens` ordinary tokens (for the engines; see the module doc)."""
    from grpo_r1.engines.rollout import tokenize_prompts

    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    filler = next(t for t in tokenizer(" 1 2 3", add_special_tokens=False)["input_ids"] if t not in specials)

    def rollout(prompts: list, trainer: Any) -> dict[str, list]:
        prompt_ids = tokenize_prompts(trainer.processing_class, prompts)
        return {"prompt_ids": prompt_ids, "completion_ids": [[filler] * tokens for _ in prompts],
                "logprobs": [[0.0] * tokens for _ in prompts]}

    return rollout


def _decoder_bytes(recipe: Recipe, model: Any, worst: WorstCase) -> int:
    """What the hf-compiled engine's static decoder keeps between rounds (KV cache, merged weights)."""
    if recipe.generation.engine != "hf-compiled":
        return 0
    from grpo_r1.engines.hf_compiled import padded_width
    from grpo_r1.engines.static_decoder import decoder_memory_bytes

    length = padded_width(worst.prompt_tokens) + worst.completion_tokens
    return decoder_memory_bytes(model, batch=worst.generation_batch, length=length, merged=recipe.generation.merged_weights)


def _optimizer_state_bytes(model: Any, optim: str) -> int:
    """The optimizer state the first real step allocates: Adam keeps two values per trainable weight."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in trainable)
    nbytes = sum(p.numel() * p.element_size() for p in trainable)
    optim = optim.lower()
    if "8bit" in optim:
        return 2 * numel
    if "adam" in optim:
        return 2 * nbytes
    return nbytes


def _kv_cache_bytes(model: Any, worst: WorstCase, dtype: torch.dtype) -> int | None:
    """Keys and values of every layer for one generation round at the worst case (from the model's config)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    except (AttributeError, TypeError, ValueError):
        return None
    tokens = worst.generation_batch * (worst.prompt_tokens + worst.completion_tokens)
    return 2 * layers * kv_heads * head_dim * tokens * torch.empty(0, dtype=dtype).element_size()


def _breakdown(model: Any, worst: WorstCase, dtype: torch.dtype, reserved: int | None, decoder: int | None,
               peak: int | None, phase: str) -> list[str]:
    """Weights, optimizer state (where reserved), the static decoder's cache and merged weights (hf-compiled),
    KV cache (in generation) and the rest of the peak."""
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    kv = _kv_cache_bytes(model, worst, dtype) if phase == GENERATION else None
    parts = [f"weights {_size(weights)}"]
    if reserved is not None:
        parts.append(f"optimizer state {_size(reserved)}")
    if decoder is not None:
        parts.append(f"hf-compiled decoder (KV cache, merged weights) {_size(decoder)}")
    if kv is not None:
        parts.append(f"KV cache ~{_size(kv)}")
    if peak is not None:
        rest = peak - weights - (reserved or 0) - (decoder or 0) - (kv or 0)
        parts.append(f"activations and gradients {_size(max(0, rest))}")
    return parts


def _torch_detail(exc: BaseException) -> str:
    """The part of torch's message worth keeping: how much it tried to allocate."""
    text = str(exc)
    found = re.search(r"Tried to allocate [\d.]+ [KMGT]?i?B", text)
    if found:
        return f"torch: {found.group(0)}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"torch: {first[:120]}"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"
