"""The training console: one readable line per logged step under the progress bar, instead of
TRL's dictionary of ~35 metrics as strings.

    step 12/30  reward 1.23 (graded_format 0.41, lenient_correctness 0.82)  correct 45%  kl 0.012
      len 63  trunc 12%  8.1 s/step  ETA 2:34

`logging.console: compact` (the default) installs `CompactProgress` in place of transformers'
progress callback; `full` keeps TRL's dictionary. Either way every metric still goes to
metrics.jsonl and the trackers. The line is written through the progress bar (tqdm.write), as
transformers writes its own, so the bar stays at the bottom.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback

logger = logging.getLogger(__name__)

# The share of completions a reward paid anything, logged by the reward guard (grpo_r1.scoring.guard).
PAID_SUFFIX = "/paid_frac"


def compact_line(logs: Mapping[str, Any], step: int, max_steps: int, seconds_per_step: float | None) -> str:
    """One console line for a logged step: step/total, reward mean, each reward's mean, the correctness
    rate, KL, mean completion length, truncation, seconds per step and the time left."""
    parts = [f"step {step}/{max_steps}"]
    if "reward" in logs:
        rewards = [(key[len("rewards/"):-len("/mean")], value) for key, value in logs.items()
                   if key.startswith("rewards/") and key.endswith("/mean")]
        each = f" ({', '.join(f'{name} {_number(value)}' for name, value in rewards)})" if len(rewards) > 1 else ""
        parts.append(f"reward {_number(logs['reward'])}{each}")
    correct = correctness_rate(logs)
    if correct is not None:
        parts.append(f"correct {correct:.0%}")
    for key, label, spec in (("kl", "kl", ".3g"), ("completions/mean_length", "len", ".0f"),
                             ("completions/clipped_ratio", "trunc", ".0%")):
        if key in logs:
            value = _real(logs[key])
            parts.append(f"{label} {'nan' if value is None else format(value, spec)}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.1f} s/step")
        parts.append(f"ETA {format_duration(seconds_per_step * max(max_steps - step, 0))}")
    return "  ".join(parts)


def correctness_rate(logs: Mapping[str, Any]) -> float | None:
    """The share of completions the first correctness reward (a name with "correct" in it) paid, if logged."""
    for key, value in logs.items():
        if key.startswith("rewards/") and key.endswith(PAID_SUFFIX) and "correct" in key:
            return _real(value)
    return None


def format_duration(seconds: float) -> str:
    """'2:34', '1:02:03' or '0:07'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _real(value: Any) -> float | None:
    """A logged value as a finite float, or None (TRL logs None or NaN after a non-finite loss)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _number(value: Any) -> str:
    value = _real(value)
    if value is None:
        return "nan"
    return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"


class CompactProgress(ProgressCallback):
    """transformers' progress bar, with `compact_line` in place of the raw dictionary under it; with
    `bar=False` (GRPOConfig.disable_tqdm) the lines are logged instead, without a bar."""

    def __init__(self, bar: bool = True) -> None:
        super().__init__()
        self.bar = bar
        self._started: tuple[float, int] | None = None  # (time, global_step) when training began or resumed

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
        self._started = (time.monotonic(), state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "reward" not in logs and "loss" not in logs:  # the end-of-training summary (train_runtime, ...)
            return
        line = compact_line(logs, state.global_step, state.max_steps, self._seconds_per_step(state))
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            logger.info("%s", line)

    def _seconds_per_step(self, state: Any) -> float | None:
        if self._started is None:
            return None
        began, first_step = self._started
        done = state.global_step - first_step
        return (time.monotonic() - began) / done if done > 0 else None


def use_compact_console(trainer: Any) -> None:
    """Replace the trainer's progress callback (or, with disable_tqdm, its printer) by `CompactProgress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactProgress(bar=not trainer.args.disable_tqdm))


def summary_line(run_dir: Path, adapter_dir: Path, steps: int, seconds: float, metrics: Sequence[Mapping[str, Any]],
                 recipe_file: Path) -> str:
    """The line a finished run ends with: steps, wall time, the reward at the start and the end (means
    of the first and last logged steps, up to 5 each), where the adapter and plots are, the
    command that evaluates the adapter against its base model, and for an offline W&B run how to
    view and upload it (W&B itself is started quiet: grpo_r1.run.tracking.start_wandb)."""
    rewards = [float(record["reward"]) for record in metrics if "reward" in record]
    learned = ""
    if rewards:
        window = max(1, min(5, len(rewards) // 2))
        first, last = rewards[:window], rewards[-window:]
        learned = (f"; reward {sum(first) / len(first):.2f} -> {sum(last) / len(last):.2f} "
                   f"(mean of the first and last {window} logged steps)")
    plots = run_dir / "plots"
    where = f"adapter in {adapter_dir}" + (f", plots in {plots}" if plots.is_dir() else "")
    wandb = run_dir / "wandb"
    offline = (f"; W&B offline: view with wandb leet {wandb / 'latest-run'}, upload with wandb sync "
               f"{wandb}/offline-run-*") if any(wandb.glob("offline-run-*")) else ""
    return (f"done: {steps} steps in {format_duration(seconds)}{learned}; {where}; evaluate it with: "
            f"python -m grpo_r1.evaluate {recipe_file} --adapter {run_dir}{offline}")
