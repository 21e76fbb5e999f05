"""Where each optimizer step's time goes: generation, scoring, training.

TRL 1.14.2 times pieces with `profiling_context` ("profiling/Time taken: GRPOTrainer.x"),
but sends those only to W&B / MLflow / Trackio, never into the trainer's logs (so not into
metrics.jsonl or the console), and has no per-step split. `StepTimer` adds four metrics
to every logged step, for every engine:

    timing/generation_s  in GRPOTrainer's generation phase: tokenizing, sampling (any engine,
                         adapter sync included), decoding
    timing/scoring_s     the rest of generating and scoring the completions: rewards, the
                         trainer's and the reference model's logprobs, advantages
    timing/training_s    the rest of the step: loss forward + backward, optimizer step
    timing/step_s        the whole optimizer step (on_step_begin to on_step_end)

and, as parts of those, for finding where the time goes (`python -m grpo_r1.bench`):

    timing/reward_s      the reward functions (part of scoring_s)
    timing/logprobs_s    forwards without gradients: the reference model's (adapter off)
                         and the old policy's logprobs (part of scoring_s)
    timing/optimizer_s   the optimizer step itself (part of training_s)

On a GPU each boundary waits for the GPU to finish (torch.cuda.synchronize), so the time
lands in the phase that queued the work, not in whichever one next reads a result.

With steps_per_generation > 1 a step that reuses stored completions reports 0 generation.
Wire it with `install_step_timer(trainer)` after building the GRPOTrainer (grpo_r1.trainer.build does).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback

from grpo_r1.trainer import trl_private

PREFIX = "timing/"
_TIMER = "_grpo_r1_step_timer"  # our own attribute on the trainer: its timer


class StepTimer(TrainerCallback):
    """Times each optimizer step's phases into the trainer's logged metrics; see the module doc."""

    # Which of the step's phases (grpo_r1.trainer.trl_private.PHASE_METHODS) adds to which total.
    _SLOTS = {"generation": "_generation", "generation_and_scoring": "_generation_and_scoring",
              "rewards": "_reward", "logprobs": "_logprobs"}

    def __init__(self) -> None:
        self.trainer: Any = None
        self._step_start: float | None = None
        self._optimizer_start: float | None = None
        self._generation = 0.0
        self._generation_and_scoring = 0.0
        self._reward = 0.0
        self._logprobs = 0.0
        self._optimizer = 0.0
        self._started: dict[str, float] = {}
        self.history: list[dict[str, float]] = []  # one entry per finished step

    def attach(self, trainer: Any) -> StepTimer:
        """Time the trainer's phases and register as its callback; a trainer already timed keeps its timer."""
        existing = getattr(trainer, _TIMER, None)
        if existing is not None:
            return existing
        self.trainer = trainer
        trl_private.watch_phases(trainer, self)
        trainer.add_callback(self)
        setattr(trainer, _TIMER, self)
        return self

    def phase_started(self, phase: str, grad: bool) -> None:
        if phase == "logprobs" and grad:
            return  # the policy's own forward is training time, not scoring
        self._started[phase] = _now()

    def phase_ended(self, phase: str, grad: bool) -> None:
        start = self._started.pop(phase, None)
        if start is not None and not (phase == "logprobs" and grad):
            slot = self._SLOTS[phase]
            setattr(self, slot, getattr(self, slot) + _now() - start)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_start = _now()
        self._generation = self._generation_and_scoring = self._reward = self._logprobs = self._optimizer = 0.0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._optimizer_start = _now()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._optimizer_start is not None:
            self._optimizer += _now() - self._optimizer_start
            self._optimizer_start = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_start is None:
            return
        step = _now() - self._step_start
        self._step_start = None
        split = {
            "generation_s": self._generation,
            "scoring_s": max(0.0, self._generation_and_scoring - self._generation),
            "training_s": max(0.0, step - self._generation_and_scoring),
            "step_s": step,
            "reward_s": self._reward,
            "logprobs_s": self._logprobs,
            "optimizer_s": self._optimizer,
        }
        self.history.append(split)
        if self.trainer is not None:
            for key, value in split.items():
                trl_private.add_step_metric(self.trainer, PREFIX + key, value)


def _now() -> float:
    """A clock reading taken after the GPU (if any) has finished the work queued so far."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def install_step_timer(trainer: Any) -> StepTimer:
    """Add per-step timing/* metrics to a GRPOTrainer; returns the timer (its `history` too)."""
    return StepTimer().attach(trainer)
