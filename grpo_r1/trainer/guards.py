"""Learning-signal guards: notice, while it runs, a GRPO run that cannot learn or has blown up.

A GRPO run can finish "successfully" having learnt nothing: every group's completions scored
the same (zero advantages), every completion was cut off before its answer, or a reward paid
everyone alike. `LearningSignalGuards` is a TrainerCallback that reads the metrics TRL 1.14.2's
GRPOTrainer logs each step and fires when one of these holds:

    guard            TRL's metric                              fires when, for `patience` steps in a row
    equal_rewards    frac_reward_zero_std                      >= guards.equal_rewards_fraction
                     (resample/equal_left, the groups trained on, with generation.resample_equal_groups)
    truncation       completions/clipped_ratio                 >= guards.truncation_fraction
    constant_reward  rewards/<name>/std                        == 0 (one value paid to every completion)
    logprob_gap      sampling/sampling_logp_difference/mean    > guards.logprob_gap_max (vllm, unsloth engines)
    nonfinite        loss, grad_norm, and the gradients        NaN or infinite: at once

What a guard does is set per guard in the recipe's `guards:` section: "warn" (one line on the
console and in <run>/guards.jsonl, training goes on), "stop" (the same, then training ends
through the trainer's `should_training_stop` flag; the adapter so far is saved and
`raise_if_stopped` raises GuardStop, so the command prints the message and exits 2) or "off".
Every message names the cause with the figures seen and the recipe setting likely to fix it.

A non-finite gradient is caught before the optimizer applies it (`on_pre_optimizer_step`):
unless the guard is off, that update is skipped, so the adapter keeps the last finite weights.
Under float16 loss scaling an infinite gradient is routine (the scaler skips the step and
lowers its scale), so there only the loss is checked.

Patience counts optimizer steps. With logging.logging_steps > 1 each logged value is the mean
over its steps, and a log whose value meets the condition counts for every step it covers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from grpo_r1.errors import GrpoR1Error
from grpo_r1.recipe import GuardsConfig

GUARDS_FILE = "guards.jsonl"

logger = logging.getLogger(__name__)

ZERO_STD = "frac_reward_zero_std"
EQUAL_LEFT = "resample/equal_left"  # grpo_r1.trainer.dynamic_sampling's
CLIPPED = "completions/clipped_ratio"
LOGP_GAP = "sampling/sampling_logp_difference/mean"
LOGP_GAP_MAX = "sampling/sampling_logp_difference/max"
_REWARD_PREFIX, _STD_SUFFIX, _MEAN_SUFFIX = "rewards/", "/std", "/mean"


class GuardStop(GrpoR1Error):
    """A guard whose action is `stop` ended training; the message says why and what to change."""

    on_every_process = True  # every process decides alike; the command prints it once


@dataclass
class GuardEvent:
    """One firing of a guard: written to guards.jsonl as one JSON line."""

    step: int
    guard: str  # equal_rewards | truncation | constant_reward | logprob_gap | nonfinite
    action: str  # warn | stop
    message: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Streak:
    """Consecutive logs in which a condition held."""

    since_step: int  # the last logged step before it began to hold
    values: list[float] = field(default_factory=list)
    fired: bool = False


class LearningSignalGuards(TrainerCallback):
    """The guards of one training run; see the module doc.

    Args:
        config: the recipe's `guards:` section.
        run_dir: where guards.jsonl goes; None writes no file.
        engine: the generation engine's name, for the logprob-gap message.
        resampling: generation.resample_equal_groups is on: TRL's frac_reward_zero_std then counts
            every round sampled, replaced groups too, so the equal-rewards guard reads the share
            of the groups trained on (resample/equal_left) instead.

    Each firing is logged as one warning line (grpo_r1.cli prints it on stderr).
    """

    def __init__(self, config: GuardsConfig, run_dir: str | Path | None = None, *, engine: str = "hf",
                 resampling: bool = False) -> None:
        self.config = config
        self.equal_key = EQUAL_LEFT if resampling else ZERO_STD
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.engine = engine
        self.events: list[GuardEvent] = []
        self.stopped: GuardEvent | None = None
        self._streaks: dict[str, _Streak] = {}
        self._last_logged_step = 0
        self._nonfinite_steps: set[int] = set()
        self._reporting = True

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Count streaks from the step training starts at (a resumed run starts past 0)."""
        self._last_logged_step = state.global_step
        self._streaks.clear()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Skip an update whose gradients hold NaN or inf (after clipping, before the optimizer)."""
        if self.config.nonfinite == "off" or model is None or getattr(args, "fp16", False):
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        bad = int(torch.stack([~torch.isfinite(g).all() for g in grads]).sum())
        if not bad:
            return
        for param in model.parameters():
            if param.requires_grad:
                param.grad = None  # optimizers skip parameters without a gradient
        step = state.global_step + 1  # the step being taken
        self._reporting = bool(getattr(state, "is_world_process_zero", True))
        self._nonfinite_steps.add(step)
        message = (
            f"the gradient at step {step} is not finite (NaN or inf in {bad} of {len(grads)} trainable tensors), "
            f"so the loss or the model diverged; that update was skipped and the adapter keeps step {step - 1}'s "
            f"weights; {_divergence_fixes(args)}"
        )
        self._fire("nonfinite", step, message, {"nonfinite_tensors": bad, "tensors": len(grads)}, control)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Check one logged step's metrics against every guard."""
        if not logs or "train_runtime" in logs or any(key.startswith("eval_") for key in logs):
            return  # the end-of-training summary and evaluation logs are not training steps
        # Every process decides (the logged metrics are gathered, so they agree); rank 0 alone reports.
        self._reporting = bool(getattr(state, "is_world_process_zero", True))
        step = state.global_step
        self._check_nonfinite(args, step, logs, control)
        cfg = self.config
        self._track("equal_rewards", "equal_rewards", args, step, _number(logs.get(self.equal_key)),
                    lambda v: v >= cfg.equal_rewards_fraction, control, self._equal_rewards_message)
        self._track("truncation", "truncation", args, step, _number(logs.get(CLIPPED)),
                    lambda v: v >= cfg.truncation_fraction, control, self._truncation_message)
        self._track("logprob_gap", "logprob_gap", args, step, _number(logs.get(LOGP_GAP)),
                    lambda v: v > cfg.logprob_gap_max, control,
                    lambda a, streak, s: self._logprob_gap_message(a, streak, s, _number(logs.get(LOGP_GAP_MAX))))
        for name in _reward_names(logs):
            std = _number(logs.get(f"{_REWARD_PREFIX}{name}{_STD_SUFFIX}"))
            mean = _number(logs.get(f"{_REWARD_PREFIX}{name}{_MEAN_SUFFIX}"))
            value = mean if std is not None and std <= 1e-12 else None
            self._track("constant_reward", f"constant_reward/{name}", args, step, value, lambda v: True, control,
                        lambda a, streak, s, name=name: self._constant_reward_message(name, streak, s))
        self._last_logged_step = step

    # ------------------------------------------------------------------ results

    def raise_if_stopped(self, adapter_dir: str | Path | None = None) -> None:
        """Raise GuardStop with the stopping guard's message if a guard stopped training."""
        event = self.stopped
        if event is None:
            return
        where = f"; the adapter so far is in {adapter_dir}" if adapter_dir is not None else ""
        raise GuardStop(f"training stopped at step {event.step} by guards.{event.guard}=stop: {event.message}{where}")

    # ------------------------------------------------------------------ internals

    def _check_nonfinite(self, args: Any, step: int, logs: Mapping[str, Any], control: Any) -> None:
        if self.config.nonfinite == "off" or step in self._nonfinite_steps:
            return
        keys = ("loss",) if getattr(args, "fp16", False) else ("loss", "grad_norm")
        bad = {key: logs[key] for key in keys
               if isinstance(logs.get(key), (int, float)) and not math.isfinite(logs[key])}
        if not bad:
            return
        self._nonfinite_steps.add(step)
        seen = ", ".join(f"{key}={value}" for key, value in bad.items())
        message = f"{seen} at step {step}: training diverged; {_divergence_fixes(args)}"
        self._fire("nonfinite", step, message, {key: str(value) for key, value in bad.items()}, control)

    def _track(self, guard: str, key: str, args: Any, step: int, value: float | None, holds: Any, control: Any,
               describe: Any) -> None:
        """Extend or end the streak of `key`; fire `guard` once when it has lasted `patience` steps."""
        if getattr(self.config, guard) == "off":
            return
        if value is None or not holds(value):
            self._streaks.pop(key, None)
            return
        streak = self._streaks.setdefault(key, _Streak(since_step=self._last_logged_step))
        streak.values.append(value)
        steps = step - streak.since_step
        if streak.fired or steps < self.config.patience:
            return
        streak.fired = True  # once per streak: it fires again only after the condition has cleared
        message = describe(args, streak, step)
        self._fire(guard, step, message, {"steps": steps, "first_step": streak.since_step + 1, "values": streak.values},
                   control)

    def _fire(self, guard: str, step: int, message: str, values: dict[str, Any], control: Any) -> None:
        action = getattr(self.config, guard)
        event = GuardEvent(step=step, guard=guard, action=action, message=message, values=values)
        self.events.append(event)
        label = "stopping training" if action == "stop" else "warning"
        if self._reporting:
            logger.warning("guard %s (guards.%s=%s) at step %d: %s", label, guard, action, step, message)
        if self._reporting and self.run_dir is not None and self.run_dir.is_dir():
            with open(self.run_dir / GUARDS_FILE, "a") as f:
                f.write(json.dumps(asdict(event)) + "\n")
        if action == "stop":
            control.should_training_stop = True
            if self.stopped is None:
                self.stopped = event

    # ------------------------------------------------------------------ messages

    def _equal_rewards_message(self, args: Any, streak: _Streak, step: int) -> str:
        return (
            f"{_span(streak.values)} of groups had all-equal rewards for {step - streak.since_step} steps "
            f"({_steps(streak, step)}; guards.equal_rewards_fraction={self.config.equal_rewards_fraction}): their "
            f"advantages are zero, so GRPO learns nothing from them; use partial-credit rewards (graded_format, "
            f"lenient_correctness), raise generation.num_generations (now {getattr(args, 'num_generations', '?')}) "
            f"or generation.temperature (now {getattr(args, 'temperature', '?')}), or teach the format first with "
            f"cold_start.steps"
        )

    def _truncation_message(self, args: Any, streak: _Streak, step: int) -> str:
        limit = getattr(args, "max_completion_length", "?")
        who = "every completion" if min(streak.values) >= 1.0 else f"{_span(streak.values)} of completions"
        return (
            f"{who} hit generation.max_completion_length={limit} for {step - streak.since_step} steps "
            f"({_steps(streak, step)}; guards.truncation_fraction={self.config.truncation_fraction}): their answers "
            f"are cut off, so rewards for the final answer cannot pay; raise generation.max_completion_length, "
            f"or ask for shorter reasoning in data.system_prompt"
        )

    def _constant_reward_message(self, name: str, streak: _Streak, step: int) -> str:
        low, high = min(streak.values), max(streak.values)
        paid = f"{low:g}" if low == high else f"{low:g} to {high:g} from step to step"
        return (
            f"reward {name!r} paid every completion the same value ({paid}) for {step - streak.since_step} steps "
            f"({_steps(streak, step)}): it gives GRPO no signal; see what it pays for with "
            f"`python -m grpo_r1.rewards check RECIPE --generate 4`, make it give partial credit, or remove it "
            f"from rewards" + (f"; if {paid} is its maximum (e.g. the format learned in a cold start), it is saturated "
                               f"and only guards what was learned: set guards.constant_reward=off to silence this"
                               if low == high and low > 0 else "")
        )

    def _logprob_gap_message(self, args: Any, streak: _Streak, step: int, worst: float | None) -> str:
        largest = f", at most {worst:.3g}" if worst is not None else ""
        return (
            f"the {self.engine} engine's logprobs differed from the trainer's by {max(streak.values):.3g} per token on "
            f"average{largest} for {step - streak.since_step} steps ({_steps(streak, step)}), above "
            f"guards.logprob_gap_max={self.config.logprob_gap_max}: the completions come from another policy than the "
            f"one trained; use the same precision on both sides (model.dtype), set lora.dropout=0 and "
            f"generation.top_p=1, or use generation.engine=hf"
        )


def read_guard_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of a run's guards.jsonl, in order (none when no guard fired)."""
    path = Path(run_dir) / GUARDS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _divergence_fixes(args: Any) -> str:
    lr = getattr(args, "learning_rate", None)
    clip = getattr(args, "max_grad_norm", None)
    return (
        f"lower training.learning_rate (now {lr:g}), keep training.max_grad_norm above 0 (now {clip:g}), check "
        f"the rewards for huge values, and prefer model.dtype bfloat16 or float32 to float16"
        if isinstance(lr, (int, float)) and isinstance(clip, (int, float))
        else "lower training.learning_rate, keep training.max_grad_norm above 0, and check the rewards for huge values"
    )


def _reward_names(logs: Mapping[str, Any]) -> list[str]:
    return [key[len(_REWARD_PREFIX):-len(_STD_SUFFIX)] for key in logs
            if key.startswith(_REWARD_PREFIX) and key.endswith(_STD_SUFFIX)]


def _number(value: Any) -> float | None:
    """A finite float, or None for a missing, None (TRL's 'no valid value') or NaN metric."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}-{high:.0%}"


def _steps(streak: _Streak, step: int) -> str:
    first = streak.since_step + 1
    return f"step {step}" if first == step else f"steps {first}-{step}"
