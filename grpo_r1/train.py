"""Train a LoRA adapter with GRPO: `python -m grpo_r1.train RECIPE.yaml [section.key=value ...]`.

The steps, in order, so that bad input fails before anything slow happens:
    1. read and validate the recipe (and the command-line overrides)
    2. load the questions and check every reward function against their columns
    3. check the model and engine can run on this machine
    4. load the model with a fresh LoRA adapter
    5. make the run folder: recipe.yaml, metrics.jsonl, W&B files
    6. train with TRL's GRPOTrainer; save the adapter and tokenizer into <run>/adapter
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.recipe import TRAINING_DEFAULTS, Recipe, load_recipe

ADAPTER_DIR = "adapter"
RECIPE_FILE = "recipe.yaml"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    global_step: int


def train(recipe: Recipe, *, overwrite: bool = False, recipe_name: str = "run") -> TrainResult:
    """Run GRPO as `recipe` describes and return where the results went."""
    from grpo_r1.data import load_questions
    from grpo_r1.model import check_model_can_load, load_model
    from grpo_r1.rewards import load_reward_functions

    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    check_model_can_load(recipe)
    engine_check(recipe)
    run_name = recipe.logging.run_name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(recipe.run.output_dir or Path("runs") / run_name)
    _check_run_dir(run_dir, overwrite)

    if recipe.model.backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and TRL; must come before the trainer is built)

    loaded = load_model(recipe)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)  # only now: a run that fails to start loses nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = recipe.to_dict()
    (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))

    from trl import GRPOConfig, GRPOTrainer

    from grpo_r1.engines import engine_from_recipe, install_step_timer, make_rollout_func
    from grpo_r1.tracking import MetricsFileCallback, start_wandb

    wandb_run = start_wandb(recipe.logging, run_name, run_dir, resolved)
    args = GRPOConfig(**grpo_config_kwargs(recipe, run_dir, run_name, loaded.dtype))
    engine = engine_from_recipe(recipe, loaded)  # None for "hf": TRL's own generate
    trainer = GRPOTrainer(
        model=loaded.model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=loaded.tokenizer,
        callbacks=[MetricsFileCallback(run_dir)],
        rollout_func=make_rollout_func(engine),
    )
    install_step_timer(trainer)  # timing/{generation,scoring,training}_s in every logged step
    if recipe.logging.completions_every:
        from grpo_r1.completions_log import CompletionsLogCallback

        trainer.add_callback(CompletionsLogCallback(trainer, every=recipe.logging.completions_every, run_dir=run_dir))
    try:
        trainer.train()
        adapter_dir = run_dir / ADAPTER_DIR
        trainer.save_model(str(adapter_dir))
        loaded.tokenizer.save_pretrained(str(adapter_dir))
    finally:
        if engine is not None:
            engine.close()
        if wandb_run is not None:
            wandb_run.finish()
    write_plots(run_dir)
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, global_step=trainer.state.global_step)


def write_plots(run_dir: Path) -> None:
    """The run's curves as PNGs in <run>/plots; a run without logged steps gets none, and says so."""
    from grpo_r1.plot import plot_run

    try:
        plot_run(run_dir)
    except GrpoR1Error as e:
        print(f"grpo_r1: no plots: {e}")


def grpo_config_kwargs(recipe: Recipe, run_dir: Path, run_name: str, dtype: Any) -> dict[str, Any]:
    """GRPOConfig's arguments: grpo_r1's defaults, then the recipe's sections, then `training:`."""
    import torch

    gen = recipe.generation
    kwargs: dict[str, Any] = dict(TRAINING_DEFAULTS)
    kwargs.update(
        output_dir=str(run_dir / "checkpoints"),
        seed=recipe.run.seed,
        num_generations=gen.num_generations,
        max_completion_length=gen.max_completion_length,
        temperature=gen.temperature,
        top_p=gen.top_p,
        reward_weights=[spec.weight for spec in recipe.rewards],
        report_to=["wandb"] if recipe.logging.report_to == "wandb" else "none",
        run_name=run_name,
        logging_steps=recipe.logging.logging_steps,
        # Unsloth's offloaded checkpointing is set up in get_peft_model; the trainer must not add its own.
        gradient_checkpointing=recipe.model.gradient_checkpointing is True,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(recipe.training)
    return kwargs


def engine_check(recipe: Recipe) -> None:
    """Fail now if the generation engine cannot run here."""
    from grpo_r1.engines import check_engine

    check_engine(recipe)


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RecipeError(f"run folder {str(run_dir)!r} already holds a run; pass --overwrite to replace it, "
                          f"or set run.output_dir / logging.run_name to a new name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.train", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="path of the recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings that replace the recipe's")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    args = parser.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        result = train(recipe, overwrite=args.overwrite, recipe_name=Path(args.recipe).stem)
    except GrpoR1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"grpo_r1: {result.global_step} steps done; adapter in {result.adapter_dir}, metrics in {result.run_dir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
