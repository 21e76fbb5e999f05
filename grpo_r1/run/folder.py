"""A run's folder when the run fails: nothing half-made is left behind, nothing already saved is lost.

A run that fails before its first training step has produced nothing worth keeping, so what it
made in its run folder is removed again: the whole folder when this run created it; a folder
that already existed keeps exactly the entries it held. From the first completed step on,
everything stays (metrics, W&B files and checkpoints show what happened and let the run resume).

A full disk (ENOSPC, or EDQUOT for a quota; or torch.save's zip writer losing bytes while the
disk has no room left, which it reports without an errno), whenever it strikes, becomes a
StorageError that names the folder and the fix instead of a traceback from whichever library was
writing.

    folder = RunFolder()
    try:
        ...
        folder.track(run_dir)            # just before the folder is made: what is already there
        run_dir.mkdir(...)
        GRPOTrainer(..., callbacks=[..., folder])   # notes the first completed step
        ...
    except Exception as exc:
        error = folder.failed(exc)       # cleans up; returns the error to raise (exc itself, or a StorageError)
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from grpo_r1.errors import RecipeError, StorageError
from grpo_r1.run.checkpoints import all_checkpoints, complete_checkpoints, is_complete

RECIPE_FILE = "recipe.yaml"  # the recipe as run: every default and override filled in
EVAL_FILE = "eval.json"  # what python -m grpo_r1.evaluate --adapter RUN_DIR writes (grpo_r1.evaluation)

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads where the writer does not raise OSError: safetensors (Rust's io::Error), C libraries.
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "StorageFull")


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then each error it was raised from (cause, else context), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk (or the user's quota) is full."""
    return any((isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS) or any(w in str(e) for w in _DISK_FULL_WORDS)
               for e in _error_chain(exc))


# torch.save's zip writer when the file system stops taking bytes: a short write it reports without an errno.
_LOST_WRITE_WORDS = ("unexpected pos",)
_LITTLE_ROOM = 16 * 2**20  # bytes left on the disk below which such a lost write is taken for a full disk


def lost_write_on_a_full_disk(exc: BaseException, folder: Path) -> bool:
    """Whether `exc` is a writer losing bytes (torch.save: "unexpected pos ...") while the disk holding
    `folder` has (almost) no room left: a full disk that raised no OSError."""
    if not any(words in str(e) for e in _error_chain(exc) for words in _LOST_WRITE_WORDS):
        return False
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < _LITTLE_ROOM


class RunFolder(TrainerCallback):
    """Knows what a run's folder held before the run, and whether a training step has completed."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.existed = False
        self.held_before: set[str] = set()
        self.trained = False

    def track(self, path: Path) -> None:
        """Call just before the run folder is made (on the process that makes it)."""
        self.path = Path(path)
        self.existed = self.path.is_dir()
        self.held_before = {entry.name for entry in self.path.iterdir()} if self.existed else set()

    def on_step_end(self, args, state, control, **kwargs):
        self.trained = True

    def failed(self, exc: BaseException) -> BaseException:
        """Clean up after a failed run and return the error to raise: a StorageError for a full disk,
        else `exc` itself. Before the first completed step, what the run made in its folder is removed."""
        if self.path is None:  # failed before the folder was made (or on a process that does not make it)
            return StorageError(f"the disk is full ({_where(exc)}); free space, or set run.output_dir to a folder "
                                f"on a disk with room") if is_disk_full(exc) else exc
        kept = self.trained
        full = is_disk_full(exc) or lost_write_on_a_full_disk(exc, self.path)  # before any cleanup frees room
        if not kept:
            self._remove_what_this_run_made()
        if not full:
            return exc
        if kept:
            saved = [p.name for p in complete_checkpoints(self.path)]
            outcome = (f"what was saved before stays in it, complete checkpoints included ({', '.join(saved)}): once "
                       f"there is room, continue with --resume {self.path}" if saved
                       else "what was saved before stays in it")
            cut_short = [p.name for p in all_checkpoints(self.path) if not is_complete(p)]
            if cut_short:  # the error itself may not say (safetensors' does not name its file)
                outcome = f"{', '.join(cut_short)} was cut short (a resume skips it); {outcome}"
        else:
            outcome = "the run had not started, so what it wrote there was removed"
        return StorageError(
            f"the disk holding run folder {str(self.path)!r} is full ({_where(exc)}); free space there, or set "
            f"run.output_dir to a folder on a disk with room; {outcome}"
        )

    def _remove_what_this_run_made(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            return
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():
            if entry.name in self.held_before:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run folder that cannot be made, or that holds a run already (unless `overwrite`)."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())  # the folder itself, or where it will be made
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"run folder {str(run_dir)!r} cannot be made here: {str(existing)!r} is "
                          f"{'a file' if not existing.is_dir() else 'not writable'}; "
                          f"set run.output_dir to a folder you can write")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RecipeError(f"run folder {str(run_dir)!r} already holds a run; pass --overwrite to replace it, "
                          f"--resume to continue it, or set run.output_dir / logging.run_name to a new name")


def _where(exc: BaseException) -> str:
    """'while writing <file>' when the error names the file, else the error's first line."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.filename:
            return f"while writing {current.filename}"
        current = current.__cause__ or current.__context__
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
