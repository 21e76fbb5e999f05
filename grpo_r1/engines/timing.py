"""Where each optimizer step's time goes: generation, scoring, training.

TRL 1.14.2 times pieces with `profiling_context` ("profiling/Time taken: GRPOTrainer.x"),
but sends those only to W&B / MLflow / Trackio, never into the trainer's logs (so not into
metrics.jsonl or the console), and has no per-step split. `StepTimer` adds four metrics
to every logged step, for every engine:

    timing/generation_s  in GRPOTrainer._generate: tokenizing, sampling (any engine,
                         adapter sync included), decoding
    timing/scoring_s     the rest of _generate_and_score_completions: rewards, the
                         trainer's and the reference model's logprobs, advantages
    timing/training_s    the rest of the step: loss forward + backward, optimizer step
    timing/step_s        the whole optimizer step (on_step_begin to on_step_end)

With steps_per_generation > 1 a step that reuses stored completions reports 0 generation.
Wire it with `install_step_timer(trainer)` after building the GRPOTrainer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

PREFIX = "timing/"


class StepTimer(TrainerCallback):
    """Times each optimizer step's phases into the trainer's logged metrics; see the module doc."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self._step_start: float | None = None
        self._generation = 0.0
        self._generation_and_scoring = 0.0
        self.history: list[dict[str, float]] = []  # one entry per finished step

    def attach(self, trainer: Any) -> StepTimer:
        """Wrap the trainer's generation and scoring methods (on this instance only) and register."""
        if getattr(trainer, "_grpo_r1_step_timer", None) is not None:
            return trainer._grpo_r1_step_timer
        self.trainer = trainer
        trainer._generate = self._timed(trainer._generate, "_generation")
        trainer._generate_and_score_completions = self._timed(trainer._generate_and_score_completions, "_generation_and_scoring")
        trainer.add_callback(self)
        trainer._grpo_r1_step_timer = self
        return self

    def _timed(self, method: Callable[..., Any], slot: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, slot, getattr(self, slot) + time.perf_counter() - start)

        return timed

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_start = time.perf_counter()
        self._generation = 0.0
        self._generation_and_scoring = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_start is None:
            return
        step = time.perf_counter() - self._step_start
        self._step_start = None
        split = {
            "generation_s": self._generation,
            "scoring_s": max(0.0, self._generation_and_scoring - self._generation),
            "training_s": max(0.0, step - self._generation_and_scoring),
            "step_s": step,
        }
        self.history.append(split)
        metrics = getattr(self.trainer, "_metrics", None)
        if metrics is not None:  # GRPOTrainer averages these over each logging interval, then logs them
            for key, value in split.items():
                metrics["train"][PREFIX + key].append(value)


def install_step_timer(trainer: Any) -> StepTimer:
    """Add per-step timing/* metrics to a GRPOTrainer; returns the timer (its `history` too)."""
    return StepTimer().attach(trainer)
