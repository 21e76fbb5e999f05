"""Resuming a run: which run folder and checkpoint, whether the recipe still describes the same
experiment, and winding the run folder's logs back to the checkpoint.

`--resume RUN_DIR` continues the run in RUN_DIR. `--resume auto` (or a bare `--resume`) finds it:
the recipe's own run folder when `run.output_dir` or `logging.run_name` names one, otherwise the
newest `runs/<recipe>-<date>-<time>` folder that holds a complete checkpoint. Either way the run
continues from its newest complete checkpoint (see `grpo_r1.run.checkpoints`).

The recipe given with --resume must describe the same experiment as the one the checkpoint was
saved with: only the keys in `HARMLESS_KEYS` (how long it runs, how it logs and saves) may differ.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import Recipe, recipe_from_dict
from grpo_r1.run.checkpoints import (
    COMPLETE_FILE,
    DAMAGED_PREFIX,
    all_checkpoints,
    checkpoint_step,
    complete_checkpoints,
    damaged_files,
    latest_checkpoint,
    remove_checkpoints_after,
    saved_processes,
)
from grpo_r1.run.folder import RECIPE_FILE
from grpo_r1.run.tracking import METRICS_FILE, SUMMARY_FILE
from grpo_r1.trainer.completions_log import COMPLETIONS_FILE
from grpo_r1.trainer.grpo_config import check_training
from grpo_r1.trainer.guards import GUARDS_FILE

logger = logging.getLogger(__name__)

AUTO = "auto"
RUNS_ROOT = Path("runs")

# Recipe keys (exact, or a prefix ending in ".") that a resumed run may change: they decide how
# long it runs, how it logs and is watched, and where and how often it saves, not what is trained.
HARMLESS_KEYS = (
    "logging.",
    "guards.",
    "run.output_dir",
    "run.preflight",
    "training.max_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.save_strategy",
    "training.logging_first_step",
    "training.logging_strategy",
    "training.log_completions",
    "training.num_completions_to_print",
    "training.disable_tqdm",
    "model.gradient_checkpointing",
    "generation.gpu_memory_utilization",
)


@dataclass
class ResumePlan:
    """Where a resumed run continues: its folder, the checkpoint, that checkpoint's step, and the
    run's name (kept in W&B unless logging.run_name now says otherwise)."""

    run_dir: Path
    checkpoint: Path
    step: int
    run_name: str
    damaged: list[Path] = field(default_factory=list)  # newer complete checkpoints whose files changed since saved


def plan_resume(recipe: Recipe, resume: str | Path, recipe_name: str, runs_root: Path = RUNS_ROOT, *,
                processes: int = 1) -> ResumePlan:
    """Find the run and checkpoint `resume` (a run folder or "auto") points at, and check that
    `recipe`, launched as `processes` processes, may continue it. Raises RecipeError naming the fix
    when it cannot. A complete checkpoint whose files no longer hash as saved is skipped with a
    warning naming the file, for the one before it."""
    run_dir = find_run_dir(recipe, resume, recipe_name, runs_root)
    complete = complete_checkpoints(run_dir)
    if not complete:
        partial = all_checkpoints(run_dir)
        found = f"only incomplete checkpoints ({', '.join(p.name for p in partial)})" if partial else "no checkpoint"
        raise RecipeError(f"--resume: run folder {str(run_dir)!r} has {found} to resume from (one is saved every "
                          f"training.save_steps steps); start it again with --overwrite instead of --resume")
    checkpoint, damaged = _newest_intact(run_dir, complete)
    saved = saved_processes(checkpoint)
    if saved is not None and saved != processes:
        how = f"accelerate launch --num_processes {saved} -m grpo_r1.train ..." if saved > 1 else \
            "python -m grpo_r1.train ..., without accelerate launch"
        raise RecipeError(f"--resume: {checkpoint.name} of {str(run_dir)!r} was saved by {saved} process(es) and this "
                          f"launch has {processes}; each process's data position, random state and buffered "
                          f"completions are in it, so resume with {saved} ({how})")
    step = checkpoint_step(checkpoint)
    check_same_experiment(saved_recipe(run_dir, checkpoint), recipe, run_dir)
    max_steps = recipe.to_dict()["training"]["max_steps"]
    if max_steps <= step:
        raise RecipeError(f"--resume: run folder {str(run_dir)!r} is already at step {step} and training.max_steps is "
                          f"{max_steps}; raise training.max_steps (e.g. training.max_steps={step * 2}) "
                          f"to train further")
    marker = json.loads((checkpoint / COMPLETE_FILE).read_text())
    run_name = recipe.logging.run_name or marker.get("run_name") or run_dir.name
    return ResumePlan(run_dir=run_dir, checkpoint=checkpoint, step=step, run_name=run_name, damaged=damaged)


def _newest_intact(run_dir: Path, complete: list[Path]) -> tuple[Path, list[Path]]:
    """The newest of the `complete` checkpoints whose files hash as saved, and the newer damaged ones."""
    damaged: dict[Path, list[str]] = {}
    for checkpoint in reversed(complete):
        bad = damaged_files(checkpoint)
        if not bad:
            for path, names in damaged.items():
                logger.warning("--resume: %s is damaged (%s: no longer what was saved, another size or hash); "
                               "resuming from %s instead, and moving it aside to %s", path.name, ", ".join(names),
                               checkpoint.name, path.with_name(DAMAGED_PREFIX + path.name))
            return checkpoint, list(damaged)
        damaged[checkpoint] = bad
    listing = "; ".join(f"{path.name}: {', '.join(names)}" for path, names in damaged.items())
    raise RecipeError(f"--resume: every complete checkpoint of {str(run_dir)!r} is damaged ({listing}: no longer "
                      f"what was saved); start the run again with --overwrite instead of --resume")


def find_run_dir(recipe: Recipe, resume: str | Path, recipe_name: str, runs_root: Path = RUNS_ROOT) -> Path:
    """The run folder that `--resume resume` means (see the module doc)."""
    if str(resume) == AUTO:
        if recipe.run.output_dir:
            run_dir = Path(recipe.run.output_dir)
        elif recipe.logging.run_name:
            run_dir = runs_root / recipe.logging.run_name
        else:
            return _newest_run(runs_root, recipe_name)
    else:
        run_dir = Path(resume)
        if recipe.run.output_dir and Path(recipe.run.output_dir).resolve() != run_dir.resolve():
            raise RecipeError(f"--resume names {str(run_dir)!r} but run.output_dir is {recipe.run.output_dir!r}; "
                              f"drop one of them")
        if checkpoint_step(run_dir) is not None:
            raise RecipeError(f"--resume takes the run folder, not a checkpoint: pass {str(run_dir.parent.parent)!r}")
    if not run_dir.is_dir():
        raise RecipeError(f"--resume: run folder {str(run_dir)!r} does not exist; pass the folder of an earlier run "
                          f"(or drop --resume to start a new one)")
    if not (run_dir / RECIPE_FILE).is_file():
        raise RecipeError(f"--resume: {str(run_dir)!r} is not a grpo_r1 run folder (it has no {RECIPE_FILE}); "
                          f"pass the folder of an earlier run")
    return run_dir


def _newest_run(runs_root: Path, recipe_name: str) -> Path:
    pattern = re.compile(re.escape(recipe_name) + r"-\d{8}-\d{6}")
    runs = sorted(p for p in runs_root.glob(f"{recipe_name}-*") if p.is_dir() and pattern.fullmatch(p.name))
    for run_dir in reversed(runs):
        if latest_checkpoint(run_dir) is not None and (run_dir / RECIPE_FILE).is_file():
            return run_dir
    raise RecipeError(f"--resume auto: no run folder {runs_root / recipe_name!s}-<date>-<time> holds a complete "
                      f"checkpoint; pass the run folder (--resume runs/NAME), or drop --resume to start a new run")


def saved_recipe(run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """The resolved recipe the checkpoint was saved with (the run's recipe.yaml for older checkpoints)."""
    path = checkpoint / RECIPE_FILE
    if not path.is_file():
        path = run_dir / RECIPE_FILE
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def check_same_experiment(saved: dict[str, Any], recipe: Recipe, run_dir: Path) -> None:
    """Raise RecipeError naming every key where `recipe` differs from the run's `saved` recipe,
    apart from `HARMLESS_KEYS`. Both sides are compared as checked recipes (training: against TRL)."""
    try:
        source = f"{run_dir}/{RECIPE_FILE}"
        saved_recipe = recipe_from_dict(saved, source=source)
        check_training(saved_recipe)
        before = _flatten(saved_recipe.to_dict())
    except RecipeError as e:
        raise RecipeError(f"--resume: the run's saved recipe no longer loads ({e}); start a new run instead") from None
    current = copy.deepcopy(recipe)
    check_training(current)  # its typed values: 1e-3 from the command line is the 0.001 saved
    after = _flatten(current.to_dict())
    missing = object()
    changed = [key for key in sorted(before.keys() | after.keys())
               if before.get(key, missing) != after.get(key, missing) and not _harmless(key)]
    if not changed:
        return
    shown = ", ".join(f"{key} ({_show(before.get(key))} -> {_show(after.get(key))})" for key in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise RecipeError(f"--resume: the recipe differs from the one run {str(run_dir)!r} was trained with in "
                      f"{shown}{more}; a resumed run must stay the same experiment: set those back, "
                      f"or start a new run without --resume")


# ... and each reward's time limit, which changes nothing a reward returns in time.
HARMLESS_PATTERN = re.compile(r"rewards\.\d+\.timeout_s")


def _harmless(key: str) -> bool:
    return (any(key.startswith(h) if h.endswith(".") else key == h for h in HARMLESS_KEYS)
            or HARMLESS_PATTERN.fullmatch(key) is not None)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _show(value: Any) -> str:
    text = json.dumps(value) if value is not None else "unset"
    return text if len(text) <= 40 else text[:37] + "..."


def rewind_run_folder(plan: ResumePlan) -> None:
    """Bring the run folder back to the checkpoint's step: metrics.jsonl and completions.jsonl
    keep only the steps up to it, checkpoints after it (incomplete ones) and the end-of-run
    summary go. Steps after the checkpoint are trained again and logged once more."""
    run_dir = plan.run_dir
    saved_metrics = plan.checkpoint / METRICS_FILE
    if saved_metrics.is_file():
        shutil.copyfile(saved_metrics, run_dir / METRICS_FILE)
    else:
        _keep_steps_up_to(run_dir / METRICS_FILE, plan.step)
    _keep_steps_up_to(run_dir / COMPLETIONS_FILE, plan.step)
    _keep_steps_up_to(run_dir / GUARDS_FILE, plan.step)
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    for path in plan.damaged:  # kept for a look, under a name that is no checkpoint
        aside = path.with_name(DAMAGED_PREFIX + path.name)
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
    remove_checkpoints_after(run_dir, plan.step)


def _keep_steps_up_to(path: Path, step: int) -> None:
    """Keep the JSON lines of `path` whose "step" is at most `step`; drop a torn last line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
