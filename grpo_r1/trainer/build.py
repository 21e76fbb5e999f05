"""The one place a GRPOTrainer is built: for training, for the benchmark and for the preflight.

    args = grpo_config(recipe, output_dir, run_name, dtype, cpu=...)
    trainer, timer = build_trainer(recipe, loaded, dataset, reward_funcs, args, engine=engine)

The trainer samples with `engine` through the rollout adapter (TRL's own generate for None),
or with an explicit `rollout_func`. It runs the reference forward without the LoRA products when
the adapter is fresh (trl_private.drop_fresh_reference_adapter), replaces equal-reward groups when
generation.resample_equal_groups says so (grpo_r1.trainer.dynamic_sampling), and logs timing/*
metrics for every step (StepTimer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from grpo_r1.engines import Engine
from grpo_r1.recipe import Recipe
from grpo_r1.trainer import trl_private
from grpo_r1.trainer.dynamic_sampling import install_dynamic_sampling
from grpo_r1.trainer.rollout import RolloutFunc, make_rollout_func
from grpo_r1.trainer.timing import StepTimer, install_step_timer


def build_trainer(
    recipe: Recipe,
    loaded: Any,
    dataset: Any,
    reward_funcs: Sequence[Callable[..., Any]],
    args: GRPOConfig,
    *,
    engine: Engine | None = None,
    rollout_func: RolloutFunc | None = None,
    callbacks: Sequence[Any] = (),
    dynamic_sampling: bool = True,
) -> tuple[GRPOTrainer, StepTimer]:
    """A GRPOTrainer of `loaded` (grpo_r1.model.LoadedModel) on `dataset` with the rewards and `args`,
    and the timer of its steps.

    `engine` samples the completions (generation.importance_sampling decides whether TRL compares
    its logprobs with the trainer's); `rollout_func` replaces it where given (the preflight's).
    `dynamic_sampling`: False leaves generation.resample_equal_groups out (the preflight's filler
    completions all score alike, so it would only sample extra rounds).
    """
    if rollout_func is None:
        rollout_func = make_rollout_func(engine, logprob_check=recipe.generation.importance_sampling)
    trainer = GRPOTrainer(
        model=loaded.model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=dataset,
        processing_class=loaded.tokenizer,
        callbacks=list(callbacks) or None,
        rollout_func=rollout_func,
    )
    # TRL writes a model card beside every checkpoint (checkpoints/README.md). For a local base it
    # names "[None]", and offline it asks W&B for the run's URL, which warns at each save. The run's
    # own card is written with the adapter (grpo_r1.run.model_card).
    trainer.create_model_card = _no_checkpoint_card
    if args.world_size > 1 and args.device.type == "cpu" and not (trainer.is_fsdp_enabled
                                                                   or trainer.is_deepspeed_enabled):
        trl_private.load_resumed_optimizer_on_the_cpu(trainer)
    # A fresh adapter's reference is the base model. With a cold start the adapter is trained before the
    # real trainer is built, so "ref" stays (and the preflight, built before it, keeps it too); sharded, the
    # weights are not whole here.
    if not recipe.cold_start.steps and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        trl_private.drop_fresh_reference_adapter(trainer)
    if recipe.model.padding_free:
        trl_private.pack_scoring_forwards(trainer, share_prompts=recipe.model.padding_free == "shared_prompt")
    if dynamic_sampling:
        install_dynamic_sampling(trainer, recipe.generation.resample_equal_groups, recipe.run.seed)
    return trainer, install_step_timer(trainer)


def _no_checkpoint_card(*args: Any, **kwargs: Any) -> None:
    """In place of Trainer.create_model_card: no card beside the checkpoints."""
