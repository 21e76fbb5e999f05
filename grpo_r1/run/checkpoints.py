"""A run's checkpoints: what each one holds, which ones are complete, and how many are kept.

Transformers' Trainer writes `<run>/checkpoints/checkpoint-N` every `training.save_steps` steps
(and at the last step): the LoRA adapter, the optimizer and scheduler, the RNG states and
`trainer_state.json` (global step, log history). `CheckpointCallback` then adds what a GRPO run
needs to continue exactly where it stopped, and marks the checkpoint complete:

    recipe.yaml       the resolved recipe that produced the checkpoint
    metrics.jsonl     the run's metrics.jsonl up to step N
    grpo_buffer-R.pt  only between generation rounds (steps_per_generation or num_iterations
                      > 1): process R's generated completions that the next steps still train on
    complete.json     written last, atomically: GRPO's micro-step counter, the run's name (W&B's),
                      the number of processes that saved it, and the name, size and BLAKE2b hash of
                      every file above. A folder without it, or with a listed file missing or of
                      another size, is incomplete (a crash mid-save) and is never resumed; one whose
                      file no longer has its hash is damaged (`damaged_files`), and a resume falls back
                      to the checkpoint before it (grpo_r1.run.resume).

Older complete checkpoints beyond `training.save_total_limit` are deleted only after the new one
is complete, so a crash at any moment leaves at least one complete checkpoint behind.

`install_checkpointing(trainer, run_dir)` wires this into a GRPOTrainer; `restore_grpo_state`
prepares it to resume from a checkpoint (the Trainer restores the rest itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from grpo_r1.trainer import trl_private

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_FILE = "complete.json"
BUFFER_FILE = "grpo_buffer-{rank}.pt"
HASH = "blake2b"
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint moved aside: damaged-checkpoint-N
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(checkpoint: Path) -> bool:
    """Whether `checkpoint` was fully written: its complete.json exists and every file it lists
    is there with the size it had when the checkpoint was saved (cheap: no file is read)."""
    try:
        marker = json.loads((Path(checkpoint) / COMPLETE_FILE).read_text())
        files = marker["files"]
        return all((Path(checkpoint) / name).stat().st_size == _size(entry) for name, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def damaged_files(checkpoint: Path) -> list[str]:
    """The files of a complete checkpoint that are not what was saved: missing, of another size, or
    with another BLAKE2b hash (checkpoints saved before hashes were recorded are checked by size)."""
    marker = json.loads((Path(checkpoint) / COMPLETE_FILE).read_text())
    damaged = []
    for name, entry in marker["files"].items():
        path = Path(checkpoint) / name
        try:
            if path.stat().st_size != _size(entry) or (isinstance(entry, dict) and file_hash(path) != entry[HASH]):
                damaged.append(name)
        except OSError:
            damaged.append(name)
    return damaged


def saved_processes(checkpoint: Path) -> int | None:
    """How many processes saved `checkpoint` (None for checkpoints from before this was recorded)."""
    marker = json.loads((Path(checkpoint) / COMPLETE_FILE).read_text())
    return marker.get("processes")


def file_hash(path: Path) -> str:
    """The BLAKE2b hex digest of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def mark_complete(folder: Path, *, global_step: int, grpo_micro_step: int, run_name: str, processes: int) -> None:
    """Write `folder`'s complete.json, atomically and last: the fields given, and every file's size and hash."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, HASH: file_hash(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE_FILE}
    marker = {"global_step": global_step, "grpo_micro_step": grpo_micro_step, "run_name": run_name,
              "processes": processes, "files": files}
    _write_atomic(folder / COMPLETE_FILE, json.dumps(marker, indent=1) + "\n")


def _size(entry: Any) -> int:
    return entry["size"] if isinstance(entry, dict) else entry  # older markers: the size alone


def all_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint-N folder of the run, complete or not, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return [p for p in all_checkpoints(run_dir) if is_complete(p)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of the run, or None when it has none."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def remove_checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """Delete the checkpoints newer than `step` (incomplete leftovers of a crash); return them."""
    removed = [p for p in all_checkpoints(run_dir) if checkpoint_step(p) > step]
    for path in removed:
        _delete(path)
    return removed


def _delete(path: Path) -> None:
    # Rename first: a half-deleted folder must never look like a checkpoint.
    doomed = path.with_name(f"deleting-{path.name}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointCallback(TrainerCallback):
    """Completes each checkpoint the Trainer saves (see the module doc) and keeps the newest `keep`.

    Args:
        trainer: the GRPOTrainer (its generation buffer is saved between generation rounds).
        run_dir: the run folder; recipe.yaml and metrics.jsonl are copied from it.
        keep: how many complete checkpoints to keep; None keeps all.
    """

    def __init__(self, trainer: Any, run_dir: Path, keep: int | None):
        self.trainer = trainer
        self.run_dir = Path(run_dir)
        self.keep = keep

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed Trainer takes save_steps and logging_steps from the checkpoint's trainer_state.json;
        # the recipe's current values are the ones that should apply.
        state.compute_steps(args, state.max_steps)

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        step, every = trl_private.micro_step(trainer), args.steps_per_generation * trainer.num_iterations
        buffered = trl_private.buffered_inputs(trainer)
        if step % every and buffered is not None:  # every process keeps its own
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(buffered, folder / BUFFER_FILE.format(rank=trainer.accelerator.process_index))
        trainer.accelerator.wait_for_everyone()  # every process's files are written before the marker
        if not state.is_world_process_zero or not folder.is_dir():
            return
        self._add_run_files(folder)
        mark_complete(folder, global_step=state.global_step, grpo_micro_step=step, run_name=args.run_name,
                      processes=trainer.accelerator.num_processes)
        self._rotate()

    def _add_run_files(self, folder: Path) -> None:
        from grpo_r1.run.tracking import METRICS_FILE

        for name in ("recipe.yaml", METRICS_FILE):
            source = self.run_dir / name
            if source.is_file():
                shutil.copyfile(source, folder / name)

    def _rotate(self) -> None:
        if not self.keep:
            return
        done = complete_checkpoints(self.run_dir)
        newest = checkpoint_step(done[-1]) if done else -1
        for path in done[:-self.keep]:
            _delete(path)
        for path in all_checkpoints(self.run_dir):  # incomplete leftovers older than a complete one
            if checkpoint_step(path) < newest and not is_complete(path):
                _delete(path)


class EpochSeededSampler(Sampler):
    """TRL's RepeatSampler whose shuffle depends only on the epoch, not on how many epochs this
    process has already iterated. TRL seeds its generator once, so epoch e gets the (e+1)-th
    permutation; a run resumed in epoch e would get the first one. Here each iteration reseeds
    and skips e permutations, which gives the uninterrupted run's order in every epoch."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate's DataLoader) at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        inner = self.inner
        if inner.shuffle and inner.seed is not None:
            inner.generator.manual_seed(inner.seed)
            for _ in range(self.epoch):
                torch.randperm(inner.num_samples, generator=inner.generator)
        return iter(inner)


def install_checkpointing(trainer: Any, run_dir: Path) -> CheckpointCallback:
    """Make `trainer`'s checkpoints resumable as the module doc describes.

    Takes over the rotation from the Trainer (`args.save_total_limit` becomes None there and is
    applied by the callback, counting complete checkpoints only) and makes the data order a
    function of the epoch. Call after building the trainer, before `trainer.train()`.
    """
    keep = trainer.args.save_total_limit
    trainer.args.save_total_limit = None
    callback = CheckpointCallback(trainer, run_dir, keep)
    trainer.add_callback(callback)
    trl_private.wrap_train_sampler(trainer, EpochSeededSampler)
    return callback


def restore_grpo_state(trainer: Any, checkpoint: Path) -> None:
    """Give `trainer` the state the Trainer does not restore itself: the trained LoRA adapter, the
    micro-step counter that decides when the next generation round happens, and the completions
    generated but not yet trained on. Call before `trainer.train(resume_from_checkpoint=checkpoint)`.

    The adapter: with a KL penalty TRL adds a frozen "ref" copy of the adapter, so a checkpoint
    holds the trained adapter at its top and "ref" in a subfolder. Transformers' resume then loads
    only the subfolders (transformers#30478) and the run would silently continue from the
    untrained adapter; so the trained weights are copied in here.
    """
    from grpo_r1.model import load_adapter_weights

    weights = Path(checkpoint) / "adapter_model.safetensors"
    if weights.is_file() and hasattr(trainer.model, "peft_config"):
        load_adapter_weights(trainer.model, weights)
    marker = json.loads((Path(checkpoint) / COMPLETE_FILE).read_text())
    trl_private.set_micro_step(trainer, marker["grpo_micro_step"])
    buffer = Path(checkpoint) / BUFFER_FILE.format(rank=trainer.accelerator.process_index)
    if buffer.is_file():
        device = trainer.accelerator.device
        # torch.load cannot map to "cpu:0", accelerate's device for each of several CPU processes
        where = "cpu" if device.type == "cpu" else device
        trl_private.set_buffered_inputs(trainer, torch.load(buffer, map_location=where, weights_only=False))
