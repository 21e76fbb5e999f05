"""The recipe as TRL's GRPOConfig: the `training:` section checked against it, the batch it
derives, and the one translation every trainer of grpo_r1 is built with (train, bench, preflight).

    batch = check_training(recipe, processes=launch.world_size)   # at the start of a run
    args = grpo_config(recipe, output_dir, run_name, dtype, cpu=launch.cpu)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import Recipe
from grpo_r1.recipe.loading import coerce, did_you_mean


def check_training(recipe: Recipe, processes: int = 1) -> EffectiveBatch:
    """Check `training:` against TRL's GRPOConfig (every key a field, every value of its type) and
    the batch it makes on `processes` processes; the values are replaced by their checked form.
    Returns the effective batch. Raises RecipeError naming the recipe's file, the key and the fix.
    Idempotent: train() and run_bench() call it; so do the front doors that call neither."""
    source = recipe.source
    fields = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    hints = typing.get_type_hints(GRPOConfig)
    checked = {}
    for key, value in recipe.training.items():
        if key not in fields:
            raise RecipeError(f"{source}: unknown key 'training.{key}' (not a field of TRL's GRPOConfig)"
                              f"{did_you_mean(key, sorted(fields), 'training.')}")
        checked[key] = coerce(hints[key], value, f"training.{key}", source)
    recipe.training = checked
    if checked.get("beta", 0.0) < 0:
        raise RecipeError(f"{source}: 'training.beta' (the KL weight) must be >= 0, got {checked['beta']}")
    batch_wide = (checked.get("scale_rewards") == "batch"
                  or checked.get("multi_objective_aggregation") == "normalize_then_sum")
    if recipe.generation.resample_equal_groups and batch_wide:
        raise RecipeError(f"{source}: generation.resample_equal_groups replaces whole groups, each normalised on its "
                          f"own; training.scale_rewards: batch and multi_objective_aggregation: normalize_then_sum "
                          f"normalise over the whole batch, which a replaced group was never part of. Use "
                          f"scale_rewards group or none with sum_then_normalize, or set resample_equal_groups=0")
    try:
        return effective_batch(checked, recipe.generation.num_generations, processes)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None


def grpo_config(recipe: Recipe, output_dir: Path, run_name: str, dtype: torch.dtype, *, cpu: bool,
                **overrides: Any) -> GRPOConfig:
    """The GRPOConfig of a run: the recipe's sections, then `training:` (defaults filled in), then `overrides`."""
    gen = recipe.generation
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=recipe.run.seed,
        num_generations=gen.num_generations,
        max_completion_length=gen.max_completion_length,
        temperature=gen.temperature,
        top_p=gen.top_p,
        reward_weights=[spec.weight for spec in recipe.rewards],
        report_to=recipe.logging.reporters or "none",  # transformers' integration of each logs every metric
        run_name=run_name,
        project=recipe.logging.project,  # Trackio's project (W&B's is set where the W&B run starts)
        logging_steps=recipe.logging.logging_steps,
        # Unsloth's offloaded checkpointing is set up in get_peft_model; the trainer must not add its own.
        gradient_checkpointing=recipe.model.gradient_checkpointing is True,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=cpu,
        # Under DDP every LoRA weight takes part in every forward pass: no search for unused ones.
        ddp_find_unused_parameters=False,
    )
    kwargs.update(recipe.training)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


@dataclass(frozen=True)
class EffectiveBatch:
    """How many completions one optimizer step and one generation round take, over all processes."""

    per_device: int
    processes: int
    accumulation: int
    generation_batch: int  # completions sampled per generation round, all processes together
    num_generations: int

    @property
    def per_step(self) -> int:
        """Completions per optimizer step: per_device x processes x gradient_accumulation_steps."""
        return self.per_device * self.processes * self.accumulation

    @property
    def questions_per_round(self) -> int:
        """Distinct questions one generation round samples (each num_generations times)."""
        return self.generation_batch // self.num_generations

    def check_fits(self, questions: int) -> None:
        """Raise RecipeError when the data holds fewer questions than one generation round takes: TRL's
        sampler only yields whole rounds, so the run would end at step 0 having trained nothing."""
        if questions >= self.questions_per_round:
            return
        raise RecipeError(
            f"the training data has {questions} question{'' if questions == 1 else 's'} but one generation round "
            f"takes {self.questions_per_round} ({self.generation_batch} completions / {self.num_generations} "
            f"generations over {self.processes} process{'es' if self.processes > 1 else ''}), so no step would "
            f"run; use more data (data.limit, data.arithmetic_examples or a larger data.source) or sample fewer "
            f"per round (training.per_device_train_batch_size, training.steps_per_generation)")

    def describe(self) -> str:
        questions = self.per_step / self.num_generations
        text = (f"effective batch {self.per_step} completions per optimizer step = {self.per_device} per device x "
                f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.accumulation} "
                f"gradient accumulation "
                f"({questions:g} question{'' if questions == 1 else 's'} x {self.num_generations} generations)")
        if self.generation_batch != self.per_step:
            text += f"; {self.generation_batch} completions sampled per generation round"
        return text


def effective_batch(training: Mapping[str, Any], num_generations: int, processes: int) -> EffectiveBatch:
    """The batch sizes TRL 1.14.2's GRPOConfig derives from `training` (GRPOConfig fields) on `processes` processes.

    TRL derives them only once the process group exists (GRPOConfig reads the world size from
    accelerate); this copy decides before it, so every process refuses a bad batch alike, and
    tests pin it to GRPOConfig over a grid of shapes and process counts.

    Raises RecipeError, naming the keys to change, where TRL would refuse them: the generation
    batch (per_device x processes x steps_per_generation, or generation_batch_size) must be a
    multiple of the global batch and hold whole groups of num_generations completions.
    """
    per_device = int(training["per_device_train_batch_size"])
    accumulation = int(training.get("gradient_accumulation_steps") or 1)
    global_batch = per_device * processes
    where = f"{per_device} per device x {processes} process{'es' if processes > 1 else ''}"
    if training.get("generation_batch_size") and training.get("steps_per_generation"):
        raise RecipeError("training.generation_batch_size and training.steps_per_generation cannot both be set; "
                          "keep one")
    if training.get("generation_batch_size"):
        generation_batch = int(training["generation_batch_size"])
        if generation_batch % global_batch:
            raise RecipeError(f"training.generation_batch_size ({generation_batch}) must be a multiple of the "
                              f"global batch ({global_batch} = {where})")
    else:
        steps = int(training.get("steps_per_generation") or accumulation)
        generation_batch = global_batch * steps
        where += f" x {steps} steps per generation"
    if generation_batch % num_generations:
        group_sizes = [str(d) for d in range(2, generation_batch + 1) if generation_batch % d == 0][:8]
        raise RecipeError(
            f"generation.num_generations ({num_generations}) must divide the completions sampled per generation round "
            f"({generation_batch} = {where}); set training.per_device_train_batch_size to a multiple of "
            f"{num_generations} (e.g. {num_generations * max(1, per_device // num_generations)})"
            + (f" or generation.num_generations to one of {', '.join(group_sizes)}" if group_sizes else "")
        )
    return EffectiveBatch(per_device, processes, accumulation, generation_batch, num_generations)
