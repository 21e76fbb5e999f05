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
                 the wrong number of values or NaN fails here, with grpo_r1.scoring's message),
                 and the reference model's forward pass (TRL's frozen copy of the adapter)
    training     the policy forward and backward pass of one micro-batch

It runs them through a throwaway GRPOTrainer built with the run's own GRPOConfig, so the batch
layout is TRL's, and its model's forward is wrapped as accelerate prepares a run's: under mixed
precision, autocast with the outputs (the logits) converted to float32 (`forward_as_prepared`).
On a CUDA GPU the optimizer state the first real step allocates is reserved too. No optimizer
step is taken and the gradients are dropped afterwards: the model's weights are left exactly as
they were.

An out-of-memory becomes a PreflightError that names the phase that ran out, the shape, the
peak memory against the cap, a breakdown (weights, optimizer state, KV cache, activations and
gradients) and the recipe settings to lower. `run.preflight`: "auto" (on when a CUDA GPU is
used), true or false.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import convert_outputs_to_fp32

from grpo_r1.engines import engine_memory_need, engine_settings
from grpo_r1.errors import GrpoR1Error, RewardError
from grpo_r1.launch import Launch
from grpo_r1.prompts import longest_prompt, tokenize_prompts
from grpo_r1.recipe import Recipe
from grpo_r1.scoring import guard_reward
from grpo_r1.trainer import trl_private
from grpo_r1.trainer.build import build_trainer
from grpo_r1.trainer.grpo_config import grpo_config
from grpo_r1.trainer.memory import (
    BACKWARD,
    GENERATION,
    POLICY_FORWARD,
    REFERENCE,
    REWARDS,
    SETUP,
    Memory,
    WorstCase,
    breakdown,
    is_out_of_memory,
    oom_message,
    optimizer_state_bytes,
    size_text,
    torch_detail,
)

logger = logging.getLogger(__name__)


class PreflightError(GrpoR1Error):
    """The worst-case step does not fit: the message names the phase, the figures and the settings to lower;
    `peak_bytes` and `cap_bytes` are the peak memory when it ran out and the cap (None where unknown)."""

    def __init__(self, message: str, peak_bytes: int | None = None, cap_bytes: int | None = None) -> None:
        super().__init__(message)
        self.peak_bytes = peak_bytes
        self.cap_bytes = cap_bytes


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
        memory = (f"; peak {size_text(self.peak_bytes)} of {size_text(self.cap_bytes)} ({self.memory_kind})"
                  if self.peak_bytes is not None and self.cap_bytes is not None else "")
        return f"one step at the worst case ({self.worst_case.describe()}) in {self.seconds:.1f} s{memory}"


def preflight_enabled(recipe: Recipe, launch: Launch) -> bool:
    """Whether `run.preflight` asks for the preflight here ("auto": when one process trains on a CUDA GPU;
    under accelerate launch the model is sharded or replicated only later, so one GPU's step would mislead)."""
    setting = recipe.run.preflight
    if setting == "auto":
        return not launch.cpu and not launch.is_distributed
    return bool(setting)


def run_preflight(recipe: Recipe, loaded: Any, dataset: Any, reward_funcs: Sequence[Callable[..., Any]],
                  launch: Launch) -> PreflightReport | None:
    """The preflight when `run.preflight` asks for it (None otherwise); logs one line when it passes.

    `loaded` is grpo_r1.model's LoadedModel, `dataset` the training questions, `reward_funcs` the
    run's reward functions, `launch` this process's place. Raises PreflightError on an
    out-of-memory and a reward's RewardError.
    """
    if not preflight_enabled(recipe, launch):
        return None
    report = preflight_step(recipe, loaded, dataset, reward_funcs, cpu=launch.cpu)
    logger.info("preflight passed: %s", report.describe())
    return report


def preflight_step(recipe: Recipe, loaded: Any, dataset: Any, reward_funcs: Sequence[Callable[..., Any]], *,
                   cpu: bool) -> PreflightReport:
    """Run one GRPO step at the recipe's worst case and leave the model as it was; see the module doc.
    `cpu`: the run trains on the CPU (GRPOConfig.use_cpu)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo_r1_preflight_") as scratch:
        args = grpo_config(recipe, Path(scratch), "preflight", loaded.dtype, cpu=cpu, report_to="none",
                           save_strategy="no")
        row, prompt_tokens = longest_prompt(dataset, tokenizer)
        worst = WorstCase(row=row, prompt_tokens=prompt_tokens,
                          completion_tokens=recipe.generation.max_completion_length,
                          generation_batch=args.per_device_train_batch_size * args.steps_per_generation,
                          micro_batch=args.per_device_train_batch_size)
        meter = Memory(torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device()))
        tracker = _PhaseTracker()
        state = _ModelState(model)
        rollout = None if recipe.generation.engine == "hf" else _full_length_rollout(tokenizer, worst.completion_tokens)
        engine_bytes, engine_share = engine_memory_need(engine_settings(recipe), model, batch=worst.generation_batch,
                                                        prompt_tokens=worst.prompt_tokens)
        trainer = reserve = decoder_hold = batch = loss = None
        try:
            with meter.capped(engine_share):
                reserve = meter.reserve(optimizer_state_bytes(model, str(args.optim)), paged="paged" in str(args.optim))
                decoder_hold = meter.reserve(engine_bytes, paged=False)
                trainer, _ = build_trainer(recipe, loaded, dataset.select([row]),
                                           [guard_reward(f) for f in reward_funcs], args, rollout_func=rollout,
                                           dynamic_sampling=False)
                trl_private.force_completion_length(trainer, worst.completion_tokens)
                trl_private.watch_phases(trainer, tracker)
                trl_private.prepare_for_step(trainer)
                with forward_as_prepared(trainer):
                    batch = trl_private.generate_batch(trainer, [dataset[row]] * worst.generation_batch)
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
            message = oom_message(recipe, worst, tracker.phase, peak, cap, meter.kind, torch_detail(exc),
                                  breakdown(model, worst, loaded.dtype,
                                            reserve.numel() if reserve is not None else None,
                                            decoder_hold.numel() if decoder_hold is not None else None,
                                            peak, tracker.phase == GENERATION))
            raise PreflightError(message, peak, cap) from None
        finally:
            del trainer, reserve, decoder_hold, batch, loss
            state.restore(model)
            gc.collect()
            meter.release()
        peak, cap = meter.peak(), meter.cap()
    return PreflightReport(worst_case=worst, phases=tracker.phases, seconds=time.perf_counter() - started,
                           peak_bytes=peak, cap_bytes=cap, memory_kind=meter.kind)


@contextmanager
def forward_as_prepared(trainer: Any) -> Iterator[None]:
    """Run the trainer's model as `accelerator.prepare` makes a real run's: with mixed precision on (bf16 or
    fp16), its forward runs under autocast and its outputs come back in float32, a float32 copy of the
    logits beside the half-precision ones. The preflight's throwaway trainer is never prepared, so without
    this its forwards would hold about one micro-batch of float32 logits less than the run's."""
    accelerator, model = trainer.accelerator, trainer.model
    if not accelerator.native_amp:
        yield
        return
    had_own = "forward" in vars(model)
    original = model.forward
    model.forward = convert_outputs_to_fp32(original)
    try:
        with accelerator.autocast():
            yield
    finally:
        if had_own:
            model.forward = original
        else:
            del model.forward


# ----------------------------------------------------------------------------- internals


class _PhaseTracker:
    """Which phase of the step is running: a listener of the throwaway trainer's phases."""

    def __init__(self) -> None:
        self.phase = SETUP
        self.phases: list[str] = []

    def enter(self, phase: str) -> None:
        self.phase = phase
        if phase not in self.phases and phase != "done":
            self.phases.append(phase)

    def phase_started(self, phase: str, grad: bool) -> None:
        # no-grad logprobs are the reference (and old-policy) forwards; with grad, the policy's own
        named = {"generation": GENERATION, "rewards": REWARDS, "logprobs": POLICY_FORWARD if grad else REFERENCE}
        if phase in named:
            self.enter(named[phase])

    def phase_ended(self, phase: str, grad: bool) -> None:
        """The phase lasts until the next one starts."""


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


def _full_length_rollout(tokenizer: Any, tokens: int) -> Callable[[list, Any], dict[str, list]]:
    """A TRL rollout_func that answers every prompt with `tokens` ordinary tokens (for the engines; see the
    module doc)."""
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    filler = next(t for t in tokenizer(" 1 2 3", add_special_tokens=False)["input_ids"] if t not in specials)

    def rollout(prompts: list, trainer: Any) -> dict[str, list]:
        prompt_ids = tokenize_prompts(trainer.processing_class, prompts)
        return {"prompt_ids": prompt_ids, "completion_ids": [[filler] * tokens for _ in prompts],
                "logprobs": [[0.0] * tokens for _ in prompts]}

    return rollout
