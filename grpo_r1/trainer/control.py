"""Supervised controls for a GRPO run: the same start and the same number of updates, spent on
the reference solutions instead of sampled completions, so GRPO's gain can be told apart from
"more training".

Each control reads a finished GRPO run's folder (its recipe.yaml and cold start) and trains a
fresh copy of its LoRA adapter:

    sft                 from the run's cold-start adapter, as many optimizer steps as the run took,
                        each on the reference solutions of the questions that GRPO's step drew
                        (TRL's sampler, rebuilt with the run's seed), with GRPO's optimizer (weight
                        decay as the Trainer groups it), learning-rate schedule and clipping.
    longer-cold-start   the cold start run for cold_start.steps + the run's steps from
                        the same fresh adapter (run.seed) on the next rows of the same order: its
                        first cold_start.steps steps are the GRPO run's own cold start.

The adapter goes to `<out>/adapter` (so `python -m grpo_r1.evaluate RECIPE --adapter <out>`
evaluates it), per-step losses to `<out>/metrics.jsonl`, and what was done, with its wall time,
to `<out>/control.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import Trainer, get_scheduler, set_seed
from trl import GRPOConfig

from grpo_r1.data import load_questions
from grpo_r1.errors import RecipeError
from grpo_r1.model import load_adapter_weights, load_model
from grpo_r1.recipe import Recipe, load_recipe
from grpo_r1.run.checkpoints import complete_checkpoints, saved_processes
from grpo_r1.run.folder import RECIPE_FILE
from grpo_r1.run.tracking import read_metrics
from grpo_r1.trainer.cold_start import (
    COLD_START_DIR,
    cold_start_batches,
    cold_start_examples,
    cold_start_optimizer,
    solution_example,
    supervised_steps,
)
from grpo_r1.trainer.grpo_config import check_training, grpo_config
from grpo_r1.trainer.trl_private import question_sampler

logger = logging.getLogger(__name__)

ARMS = ("sft", "longer-cold-start")
CONTROL_FILE = "control.json"


@dataclass
class ControlResult:
    out_dir: Path
    arm: str
    steps: int
    seconds: float


def grpo_question_order(recipe: Recipe, dataset_size: int, args: GRPOConfig, steps: int) -> list[list[int]]:
    """The dataset rows whose completions each of GRPO's first `steps` optimizer steps trains on.

    TRL's sampler (rebuilt with the run's seed) draws a round of distinct questions per
    generation; a round feeds `num_iterations x steps_per_generation / gradient_accumulation_steps`
    optimizer steps. Where a pass over the round takes several steps, each step gets an equal
    share of its questions (TRL gives each a random slice of the round's completions).
    """
    per_pass, remainder = divmod(args.steps_per_generation, args.gradient_accumulation_steps)
    if remainder or per_pass == 0:
        raise RecipeError(f"{recipe.source}: the control needs each generation round to feed whole optimizer steps; "
                          f"training.steps_per_generation ({args.steps_per_generation}) must be a multiple of "
                          f"training.gradient_accumulation_steps ({args.gradient_accumulation_steps})")
    questions_per_round = args.generation_batch_size // args.num_generations
    if questions_per_round % per_pass:
        raise RecipeError(f"{recipe.source}: a round's {questions_per_round} questions do not split evenly over its "
                          f"{per_pass} optimizer steps; make training.per_device_train_batch_size a multiple of "
                          f"{per_pass * args.num_generations}")
    sampler: Sampler = question_sampler(dataset_size, questions_per_round, shuffle=args.shuffle_dataset, seed=args.seed)
    steps_per_round = per_pass * args.num_iterations
    rounds_needed = -(-steps // steps_per_round)
    rounds: list[list[int]] = []
    while len(rounds) < rounds_needed:  # one epoch per pass over the sampler, as the Trainer iterates it
        epoch = list(sampler)
        rounds += [epoch[i: i + questions_per_round] for i in range(0, len(epoch), questions_per_round)]
    share = questions_per_round // per_pass
    order = []
    for step in range(steps):
        questions = rounds[step // steps_per_round]
        part = (step % steps_per_round) % per_pass
        order.append(questions[part * share: (part + 1) * share])
    return order


def run_control(run_dir: str | Path, arm: str, out_dir: str | Path | None = None, *,
                overwrite: bool = False) -> ControlResult:
    """Train the supervised control `arm` (one of ARMS, see the module doc) of the GRPO run in `run_dir`.

    `out_dir` defaults to `<run_dir>/control-<arm>`. Raises RecipeError when `run_dir` is not a
    run of one process with a cold start and logged steps, or `out_dir` already holds a control
    (unless `overwrite`).
    """
    if arm not in ARMS:
        raise RecipeError(f"unknown control arm {arm!r}; choose one of {', '.join(ARMS)}")
    run_dir = Path(run_dir)
    recipe = _run_recipe(run_dir)
    steps_taken = _steps_taken(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / f"control-{arm}"
    _check_out_dir(out, overwrite)
    check_training(recipe)
    start = time.perf_counter()
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    set_seed(recipe.run.seed)  # the GRPO run's fresh adapter, before its cold start
    loaded = load_model(recipe)
    model, tokenizer = loaded.model, loaded.tokenizer
    on_gpu = torch.cuda.is_available()
    if on_gpu and not recipe.model.load_in_4bit:  # a 4-bit model already sits on the GPU it was quantized on
        model.to("cuda")
    args = grpo_config(recipe, out / "unused", "control", loaded.dtype, cpu=not on_gpu)
    if args.max_steps < 1:
        raise RecipeError(f"{recipe.source}: the controls follow a run of training.max_steps steps (its learning-rate "
                          f"schedule and question order); this run trained by epochs (max_steps {args.max_steps})")
    cold = recipe.cold_start
    if arm == "sft":
        load_adapter_weights(model, _cold_start_weights(run_dir))
        order = grpo_question_order(recipe, len(dataset), args, steps_taken)
        batches = [[solution_example(tokenizer, dataset[i], recipe.layout) for i in rows] for rows in order]
        optimizer = grpo_optimizer(model, args)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                  num_warmup_steps=args.get_warmup_steps(args.max_steps),
                                  num_training_steps=args.max_steps,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        detail = {"questions": order, "learning_rate": args.learning_rate, "lr_scheduler": str(args.lr_scheduler_type),
                  "optimizer": args.optim.value, "weight_decay": args.weight_decay,
                  "started_from": str(_cold_start_weights(run_dir).parent)}
        max_grad_norm = args.max_grad_norm
    else:
        longer = dataclasses.replace(cold, steps=cold.steps + steps_taken)
        batches = cold_start_batches(cold_start_examples(tokenizer, dataset, longer, recipe.run.seed, recipe.layout),
                                     longer)
        optimizer = cold_start_optimizer(model, longer)
        scheduler, max_grad_norm = None, 1.0
        detail = {"learning_rate": cold.learning_rate, "batch_size": cold.batch_size, "started_from": "a fresh adapter"}
    out.mkdir(parents=True, exist_ok=True)
    logger.info("control %s: %d supervised steps from %s", arm, len(batches), detail["started_from"])
    records = supervised_steps(model, tokenizer, batches, optimizer, scheduler=scheduler, max_grad_norm=max_grad_norm,
                               metrics_path=out / "metrics.jsonl", label=f"control {arm}")
    model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    seconds = round(time.perf_counter() - start, 1)
    summary = {"arm": arm, "run": str(run_dir), "steps": len(records), "seconds": seconds,
               "examples": sum(len(b) for b in batches), "final_loss": records[-1]["loss"] if records else None,
               **detail}
    (out / CONTROL_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return ControlResult(out_dir=out, arm=arm, steps=len(records), seconds=seconds)


def grpo_optimizer(model: Any, args: GRPOConfig) -> torch.optim.Optimizer:
    """The optimizer transformers' Trainer builds for GRPO (Trainer.create_optimizer): `args.optim`'s
    class and settings, with `args.weight_decay` on the trainable weights it decays and none on
    biases and norms."""
    decayed = set(Trainer.get_decay_parameter_names(None, model))  # reads only `model` (transformers 5.17)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for name, p in trainable if name in decayed], "weight_decay": args.weight_decay},
              {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0}]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **optimizer_kwargs)  # both groups, an empty one too, as the Trainer passes them


def _steps_taken(run_dir: Path) -> int:
    """How many optimizer steps the GRPO run took (a guard's stop or a Ctrl-C ends it early), on one process."""
    checkpoints = complete_checkpoints(run_dir)
    processes = saved_processes(checkpoints[-1]) if checkpoints else None
    if processes not in (None, 1):
        raise RecipeError(f"the run in {str(run_dir)!r} trained on {processes} processes; the controls rebuild the "
                          f"questions of one process's rounds, so train the run on one process")
    logged = read_metrics(run_dir)
    if not logged:
        raise RecipeError(f"the run in {str(run_dir)!r} logged no training step (metrics.jsonl is empty); train it "
                          f"first")
    return int(logged[-1]["step"])


def _run_recipe(run_dir: Path) -> Recipe:
    if not (run_dir / RECIPE_FILE).is_file():
        raise RecipeError(f"{str(run_dir)!r} is not a run folder (no {RECIPE_FILE}); pass the folder "
                             f"python -m grpo_r1.train wrote (runs/<name>)")
    recipe = load_recipe(run_dir / RECIPE_FILE)
    if not recipe.cold_start.steps:
        raise RecipeError(f"the run in {str(run_dir)!r} had no cold start (cold_start.steps: 0); the controls "
                             f"start from a cold-start adapter, so train the run with cold_start.steps > 0")
    weights = _cold_start_weights(run_dir)
    if not weights.is_file():
        raise RecipeError(f"{str(weights)!r} is missing: the run's cold start did not finish; train it again")
    return recipe


def _cold_start_weights(run_dir: Path) -> Path:
    return run_dir / COLD_START_DIR / "adapter" / "adapter_model.safetensors"


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RecipeError(f"{str(out)!r} already holds a control; pass --overwrite to replace it or --out "
                                 f"for another folder")
        shutil.rmtree(out)


__all__ = ["ARMS", "CONTROL_FILE", "ControlResult", "grpo_question_order", "run_control"]
