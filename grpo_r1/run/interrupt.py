"""Ctrl-C during training: finish the current step, save a checkpoint, stop.

The first SIGINT only sets a flag; at the end of the optimizer step in progress the Trainer is
told to save a checkpoint and stop, and `train` raises `TrainingInterrupted` (the command line
prints how to resume and exits with 130). A second SIGINT raises KeyboardInterrupt at once,
without a new checkpoint: the run can still resume from its newest complete one.

    stopper = StopOnInterrupt()
    trainer.add_callback(stopper)
    with stopper.catching_sigint():
        trainer.train()
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EXIT_CODE = 130  # the shell's status for a process ended by SIGINT


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C at `step`: with `saved`, after saving a checkpoint there;
    without, aborted by a second Ctrl-C. `checkpoint` is the run's newest complete checkpoint
    (None if it has none); the run in `run_dir` resumes from it."""

    def __init__(self, run_dir: Path, checkpoint: Path | None, step: int, saved: bool):
        super().__init__(f"{'stopped' if saved else 'aborted'} at step {step}; newest checkpoint: {checkpoint}")
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.step = step
        self.saved = saved


class StopOnInterrupt(TrainerCallback):
    """Turns the first SIGINT into "save a checkpoint and stop after this step" (see the module doc)."""

    def __init__(self) -> None:
        self.requested = False

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to abort at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested_anywhere(args):
            control.should_save = True
            control.should_training_stop = True

    def _requested_anywhere(self, args) -> bool:
        """Under several processes, all stop at the same step if any of them saw the Ctrl-C."""
        if args.world_size <= 1 or not torch.distributed.is_initialized():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            self.requested = True  # every process then saves, stops and exits the same way
        return bool(flag.item())

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[StopOnInterrupt]:
        """Handle SIGINT as described while the block runs (only in the main thread, where Python
        delivers signals; elsewhere the block runs unchanged)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
