"""Train a LoRA adapter with GRPO: `python -m grpo_r1.train RECIPE.yaml [section.key=value ...]`.

The steps, in order, so that bad input fails before anything slow happens:
    1. read and validate the recipe (and the command-line overrides)
    2. load the questions; check every reward function against their columns, and call it once
       on sample completions (the gold solution, a wrong answer, untagged prose)
    3. check the model and engine can run on this machine
    4. load the model with a fresh LoRA adapter
    5. make the run folder: recipe.yaml, metrics.jsonl, W&B files
    6. train with TRL's GRPOTrainer; save the adapter and tokenizer into <run>/adapter

`--resume [RUN_DIR|auto]` continues a run from its newest complete checkpoint (grpo_r1/resume.py
says which run `auto` picks and which recipe changes it allows); Ctrl-C saves a checkpoint, prints
the command that resumes, and exits with 130 (grpo_r1/interrupt.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grpo_r1.distributed import Launch, agree, barrier, launch_from_env, leave, on_main_then_share
from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.recipe import TRAINING_DEFAULTS, Recipe, load_recipe

ADAPTER_DIR = "adapter"
RECIPE_FILE = "recipe.yaml"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    global_step: int


def train(recipe: Recipe, *, overwrite: bool = False, resume: str | Path | None = None,
          recipe_name: str = "run", launch: Launch | None = None) -> TrainResult:
    """Run GRPO as `recipe` describes and return where the results went.

    `resume` (a run folder, or "auto") continues that run from its newest complete checkpoint
    instead of starting a new one. A Ctrl-C raises `grpo_r1.interrupt.TrainingInterrupted`.
    `launch`: this process's place under accelerate launch (default: read from the environment);
    rank 0 alone writes the run folder, and every process agrees on its name and on refusals.
    A run that fails before its first step leaves no run folder behind, and a full disk raises a
    StorageError that names the folder (grpo_r1/run_folder.py).
    """
    from grpo_r1.run_folder import RunFolder

    folder = RunFolder()
    try:
        return _train(recipe, folder, overwrite=overwrite, resume=resume, recipe_name=recipe_name, launch=launch)
    except Exception as exc:
        error = folder.failed(exc)  # removes what a run that never stepped made; names a full disk
        if error is exc:
            raise
        raise error from exc


def _train(recipe: Recipe, folder: Any, *, overwrite: bool, resume: str | Path | None, recipe_name: str,
           launch: Launch | None) -> TrainResult:
    """`train`'s steps, in order; `folder` (a RunFolder) learns where the run folder is and when a step is done."""
    if resume is not None and overwrite:
        raise RecipeError("--resume continues a run and --overwrite replaces it; pass only one of them")
    from grpo_r1.cold_start import check_cold_start_data
    from grpo_r1.data import load_questions
    from grpo_r1.model import check_model_can_load, load_model
    from grpo_r1.rewards import load_reward_functions, try_rewards_on_samples

    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    check_cold_start_data(recipe.cold_start, dataset.column_names)
    try_rewards_on_samples(reward_funcs, dataset)  # a reward that raises or returns NaN fails now, not at step 1
    check_model_can_load(recipe)
    if recipe.model.init == "random" and not recipe.model.train_random_init:
        raise RecipeError("model.init is 'random': its weights are noise, made for measuring speed and memory with "
                          "python -m grpo_r1.bench; set model.train_random_init=true to train it anyway")
    engine_check(recipe)
    launch = launch or launch_from_env()
    launch, batch = start_processes(recipe, launch)
    run_name = agree(launch, recipe.logging.run_name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(recipe.run.output_dir or Path("runs") / run_name)
    resuming = on_main_then_share(launch, lambda: _plan_resume(recipe, resume, recipe_name, launch.world_size))  # None: a new run
    if resuming is not None:
        run_dir, run_name = resuming.run_dir, resuming.run_name
    else:
        on_main_then_share(launch, lambda: _check_run_dir(run_dir, overwrite))

    if recipe.model.backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and TRL; must come before the trainer is built)

    from transformers import set_seed

    set_seed(recipe.run.seed)  # the fresh LoRA adapter's random init follows run.seed: same seed, same run
    loaded = load_model(recipe, launch=launch)
    from grpo_r1.preflight import run_preflight

    if not launch.shards_parameters:  # sharded, the model is whole only once the trainer wraps it
        run_preflight(recipe, loaded, dataset, reward_funcs)  # one worst-case step now (run.preflight), not an OOM hours in
    resolved = recipe.to_dict()
    if launch.is_main:  # the other processes wait at the barrier, then find the folder ready
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)  # only now: a run that fails to start loses nothing
        if resuming is not None:
            from grpo_r1.resume import rewind_run_folder

            rewind_run_folder(resuming)  # metrics.jsonl back to the checkpoint's step
        folder.track(run_dir)  # what a run that fails before its first step must leave as it found it
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        print(f"grpo_r1: {launch.describe()}; {batch.describe()}", flush=True)
    barrier(launch)
    if recipe.cold_start.steps and resuming is None:  # a checkpoint's adapter already holds it
        from grpo_r1.cold_start import run_cold_start

        run_cold_start(loaded.model, loaded.tokenizer, dataset, recipe.cold_start, recipe.run.seed, run_dir,
                       write_files=launch.is_main)

    from trl import GRPOConfig, GRPOTrainer

    from grpo_r1.engines import engine_from_recipe, install_step_timer, make_rollout_func
    from grpo_r1.tracking import MetricsFileCallback, start_wandb

    # Only rank 0 starts W&B; transformers' W&B callback logs from rank 0 only as well.
    wandb_run = start_wandb(recipe.logging, run_name, run_dir, resolved, resume=resuming is not None) if launch.is_main else None
    engine = None  # set up inside the try: a failure while building the trainer still finishes W&B and frees the engine
    interrupted = False
    try:
        args = GRPOConfig(**grpo_config_kwargs(recipe, run_dir, run_name, loaded.dtype))
        engine = engine_from_recipe(recipe, loaded, processes=launch.world_size, dataset=dataset)  # None for "hf": TRL's own generate
        trainer = GRPOTrainer(
            model=loaded.model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=dataset,
            processing_class=loaded.tokenizer,
            callbacks=[MetricsFileCallback(run_dir)],
            rollout_func=make_rollout_func(engine, logprob_check=recipe.generation.importance_sampling),
        )
        install_step_timer(trainer)  # timing/{generation,scoring,training}_s in every logged step
        trainer.add_callback(folder)  # the first completed step: from then on the run folder is kept
        from grpo_r1.guards import install_guards

        guards = install_guards(trainer, recipe, run_dir)  # warn, or stop, when GRPO cannot learn (recipe's guards:)
        if recipe.logging.completions_every:
            from grpo_r1.completions_log import CompletionsLogCallback

            trainer.add_callback(CompletionsLogCallback(trainer, every=recipe.logging.completions_every, run_dir=run_dir))
        stopper = prepare_checkpoints(trainer, run_dir, resuming)
        run_training(trainer, stopper, run_dir, resuming)
        adapter_dir = run_dir / ADAPTER_DIR
        save_adapter(trainer, loaded.tokenizer, adapter_dir, launch)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if engine is not None:
            engine.close()  # vLLM's shutdown also ends torch.distributed: no collective may follow it
        if wandb_run is not None:
            wandb_run.finish(exit_code=130 if interrupted else None)  # 130: stopped by Ctrl-C
    if launch.is_main:
        write_plots(run_dir)
    guards.raise_if_stopped(adapter_dir)  # a guard's stop: the adapter so far is saved, the command exits 2
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, global_step=trainer.state.global_step)


def _plan_resume(recipe: Recipe, resume: str | Path | None, recipe_name: str, num_processes: int = 1) -> Any:
    """The run and checkpoint to continue (grpo_r1.resume.ResumePlan), or None for a new run."""
    if resume is None:
        return None
    from grpo_r1.resume import plan_resume

    plan = plan_resume(recipe, resume, recipe_name, num_processes=num_processes)
    print(f"grpo_r1: resuming {plan.run_dir} from {plan.checkpoint.name}")
    return plan


def prepare_checkpoints(trainer: Any, run_dir: Path, resuming: Any) -> Any:
    """Make the trainer's checkpoints complete and bounded, give it the resumed checkpoint's GRPO
    state, and return the callback that turns Ctrl-C into "save a checkpoint and stop"."""
    from grpo_r1.checkpoint import install_checkpointing, restore_grpo_state
    from grpo_r1.interrupt import StopOnInterrupt

    install_checkpointing(trainer, run_dir)
    if resuming is not None:
        restore_grpo_state(trainer, resuming.checkpoint)
    stopper = StopOnInterrupt()
    trainer.add_callback(stopper)
    return stopper


def run_training(trainer: Any, stopper: Any, run_dir: Path, resuming: Any) -> None:
    """trainer.train(), from the resumed checkpoint if any; raises TrainingInterrupted when a
    Ctrl-C stopped it before max_steps (saved=True) or a second one aborted it (saved=False)."""
    from grpo_r1.checkpoint import latest_checkpoint
    from grpo_r1.interrupt import TrainingInterrupted

    try:
        with stopper.catching_sigint():
            trainer.train(resume_from_checkpoint=str(resuming.checkpoint) if resuming is not None else None)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir, latest_checkpoint(run_dir), trainer.state.global_step, saved=False) from None
    if stopper.requested and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingInterrupted(run_dir, latest_checkpoint(run_dir), trainer.state.global_step, saved=True)


def start_processes(recipe: Recipe, launch: Launch) -> tuple[Launch, Any]:
    """Under accelerate launch: refuse what cannot run on several processes, check the global
    batch as TRL will, and join the process group. Returns the launch as it really runs (on a
    CPU accelerate ignores FSDP and DeepSpeed and runs DDP over gloo) and the effective batch."""
    import dataclasses

    import torch

    from grpo_r1.distributed import check_launch, join
    from grpo_r1.recipe import effective_batch

    cpu = bool(recipe.training.get("use_cpu", not torch.cuda.is_available()))
    if cpu and launch.sharding != "none":
        if launch.is_main:
            print(f"grpo_r1: on a CPU accelerate runs the {launch.sharding} config as DDP over gloo (no sharding)")
        launch = dataclasses.replace(launch, sharding="none", fsdp_version=None, zero_stage=None, fsdp_offload=False)
    check_launch(recipe, launch)
    batch = effective_batch({**TRAINING_DEFAULTS, **recipe.training}, recipe.generation.num_generations, launch.world_size)
    join(launch, cpu=cpu)
    return launch, batch


def save_adapter(trainer: Any, tokenizer: Any, adapter_dir: Path, launch: Launch) -> None:
    """Save the trained adapter and the tokenizer into `adapter_dir`. Every process must call it
    (FSDP and ZeRO-3 gather the sharded weights for it); rank 0 writes the files."""
    if getattr(trainer, "is_fsdp_enabled", False):
        # Checkpoints use SHARDED_STATE_DICT, with which save_model writes nothing: gather the whole adapter.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter_dir))
    if launch.is_main:
        tokenizer.save_pretrained(str(adapter_dir))


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
        # Under DDP every LoRA weight takes part in every forward pass: no search for unused ones.
        ddp_find_unused_parameters=False,
    )
    kwargs.update(recipe.training)
    return kwargs


def engine_check(recipe: Recipe) -> None:
    """Fail now if the generation engine cannot run here."""
    from grpo_r1.engines import check_engine

    check_engine(recipe)


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())  # the folder itself, or where it will be made
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"run folder {str(run_dir)!r} cannot be made here: {str(existing)!r} is "
                          f"{'a file' if not existing.is_dir() else 'not writable'}; set run.output_dir to a folder you can write")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RecipeError(f"run folder {str(run_dir)!r} already holds a run; pass --overwrite to replace it, "
                          f"--resume to continue it, or set run.output_dir / logging.run_name to a new name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.train", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="path of the recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value settings that replace the recipe's")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR|auto",
                        help="continue a run from its newest complete checkpoint; auto (the default): the recipe's "
                             "run folder, else the newest runs/<recipe>-<date>-<time> with a checkpoint")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        overrides.append(args.resume)  # `--resume a.b=c`: an override, not a run folder
        args.resume = "auto"
    from grpo_r1.interrupt import EXIT_CODE, TrainingInterrupted

    launch = Launch()
    try:
        launch = launch_from_env()  # one of several processes under accelerate launch, or the only one
        recipe = load_recipe_once(args.recipe, overrides, launch)
        result = train(recipe, overwrite=args.overwrite, resume=args.resume, recipe_name=Path(args.recipe).stem,
                       launch=launch)
    except GrpoR1Error as e:
        close_progress_bars()  # a bar the failure left open would run into the error line
        if launch.is_main or not getattr(e, "on_every_process", False):  # a shared refusal is printed once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        if launch.is_main:
            print(interrupted_message(stop, args.recipe, overrides), file=sys.stderr)
        return EXIT_CODE
    finally:
        leave(launch)
    if launch.is_main:
        print(f"grpo_r1: {result.global_step} steps done; adapter in {result.adapter_dir}, metrics in {result.run_dir / 'metrics.jsonl'}")
    return 0


def close_progress_bars() -> None:
    """End the tqdm progress bars still open (training's, when a step failed), each on its own line."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()


def load_recipe_once(path: str, overrides: list[str], launch: Launch) -> Recipe:
    """load_recipe for the batch of all processes; every process reads the same file, so an error
    is the same everywhere and marked to be printed by rank 0 only."""
    try:
        return load_recipe(path, overrides, num_processes=launch.world_size)
    except GrpoR1Error as e:
        e.on_every_process = True
        raise


def interrupted_message(stop: Any, recipe_path: str, overrides: list[str]) -> str:
    """What a stopped run prints: where it stopped and the exact command that continues it."""
    how = "stopped" if stop.saved else "aborted"
    if stop.checkpoint is None:
        return (f"grpo_r1: {how} at step {stop.step} before any checkpoint was saved; "
                f"start again with --overwrite, or with a new run.output_dir")
    command = shlex.join(["python", "-m", "grpo_r1.train", recipe_path, *overrides, "--resume", str(stop.run_dir)])
    return f"grpo_r1: {how} at step {stop.step}; checkpoint {stop.checkpoint} is complete. Resume with:\n  {command}"


if __name__ == "__main__":
    sys.exit(main())
