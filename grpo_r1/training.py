"""Train a LoRA adapter with GRPO as a recipe says, in named stages, so that bad input fails
before anything slow happens:

    1. check the `training:` section against TRL and the batch it makes on this launch
    2. load the questions and the rewards; call every reward once on sample completions
    3. check that the model, the engine and the trackers of logging.report_to can run on this machine
    4. start the processes (under accelerate launch) and agree on the run folder (or the run to resume)
    5. load the model with a fresh LoRA adapter (seeded by run.seed); the worst-case preflight step
    6. make the run folder: recipe.yaml, then the cold start (when the recipe has one)
    7. train with TRL's GRPOTrainer; save the adapter and tokenizer into <run>/adapter; draw the curves

`resume` continues a run from its newest complete checkpoint (grpo_r1.run.resume says which run
`auto` picks and which recipe changes it allows); Ctrl-C saves a checkpoint and raises
TrainingInterrupted (grpo_r1.run.interrupt).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import set_seed

from grpo_r1.data import load_questions
from grpo_r1.engines import check_engine, engine_from_recipe, engine_settings
from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.launch import Launch, agree, barrier, check_launch, join, launch_from_env, on_main_then_share
from grpo_r1.model import check_model_can_load, load_model
from grpo_r1.planning import fit_recipe
from grpo_r1.recipe import Recipe
from grpo_r1.run.checkpoints import install_checkpointing, latest_checkpoint, restore_grpo_state
from grpo_r1.run.folder import RECIPE_FILE, RunFolder, check_run_dir
from grpo_r1.run.interrupt import StopOnInterrupt, TrainingInterrupted
from grpo_r1.run.model_card import write_adapter_card
from grpo_r1.run.plots import plot_run
from grpo_r1.run.resume import ResumePlan, plan_resume, rewind_run_folder
from grpo_r1.run.tracking import METRICS_FILE, MetricsFileCallback, check_reporters, log_tensorboard_into, start_wandb
from grpo_r1.scoring import load_reward_functions, try_rewards_on_samples
from grpo_r1.trainer.build import build_trainer
from grpo_r1.trainer.cold_start import check_cold_start_data, run_cold_start
from grpo_r1.trainer.completions_log import CompletionsLogCallback
from grpo_r1.trainer.console import use_compact_console
from grpo_r1.trainer.grpo_config import EffectiveBatch, check_training, grpo_config
from grpo_r1.trainer.guards import LearningSignalGuards
from grpo_r1.trainer.preflight import run_preflight

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    global_step: int


@dataclass
class RunPlan:
    """Where this run writes: its folder and name, and the checkpoint it resumes from (None: a new run)."""

    run_dir: Path
    run_name: str
    resuming: ResumePlan | None


def train(recipe: Recipe, *, overwrite: bool = False, resume: str | Path | None = None,
          recipe_name: str = "run", launch: Launch | None = None) -> TrainResult:
    """Run GRPO as `recipe` describes and return where the results went.

    `resume` (a run folder, or "auto") continues that run from its newest complete checkpoint
    instead of starting a new one. A Ctrl-C raises `grpo_r1.run.interrupt.TrainingInterrupted`.
    `launch`: this process's place under accelerate launch (default: read from the environment);
    rank 0 alone writes the run folder, and every process agrees on its name and on refusals.
    A run that fails before its first step leaves no run folder behind, and a full disk raises a
    StorageError that names the folder (grpo_r1.run.folder).
    """
    folder = RunFolder()
    try:
        return _train(recipe, folder, overwrite=overwrite, resume=resume, recipe_name=recipe_name,
                      launch=launch or launch_from_env())
    except Exception as exc:
        error = folder.failed(exc)  # removes what a run that never stepped made; names a full disk
        if error is exc:
            raise
        raise error from exc


def _train(recipe: Recipe, folder: RunFolder, *, overwrite: bool, resume: str | Path | None, recipe_name: str,
           launch: Launch) -> TrainResult:
    """`train`'s stages, in order; `folder` learns where the run folder is and when a step is done."""
    if resume is not None and overwrite:
        raise RecipeError("--resume continues a run and --overwrite replaces it; pass only one of them")
    if recipe.run.auto_fit and resume is not None:
        raise RecipeError("run.auto_fit picks the settings of a new run, and the run being resumed already has its "
                          "own: resume it with the recipe.yaml in its run folder (python -m grpo_r1.train "
                          "RUN_DIR/recipe.yaml --resume RUN_DIR), or set run.auto_fit=false")
    batch = _alike_everywhere(lambda: check_training(recipe, processes=launch.world_size))
    dataset, reward_funcs = prepare_data(recipe)
    batch.check_fits(len(dataset))
    check_machine(recipe)
    launch = start_processes(recipe, launch)
    plan = plan_run(recipe, launch, resume=resume, recipe_name=recipe_name, overwrite=overwrite)
    if recipe.run.auto_fit:  # after the run folder is checked: the probes take minutes
        recipe = fit_recipe(recipe)
        batch = check_training(recipe, processes=launch.world_size)
    loaded = load_seeded_model(recipe, launch)
    if not launch.shards_parameters:  # sharded, the model is whole only once the trainer wraps it
        run_preflight(recipe, loaded, dataset, reward_funcs, launch)  # one worst-case step now, not an OOM hours in
    open_run_folder(recipe, plan, folder, launch, batch, overwrite=overwrite)
    if recipe.cold_start.steps and plan.resuming is None:  # a checkpoint's adapter already holds it
        if not recipe.model.load_in_4bit:  # transformers loads on the CPU; a 4-bit model sits on its GPU already
            loaded.model.to(launch.device)  # the trainer would move it there too, but only after the cold start
        run_cold_start(loaded.model, loaded.tokenizer, dataset, recipe.cold_start, recipe.run.seed, plan.run_dir,
                       write_files=launch.is_main, layout=recipe.layout)
    return run_grpo(recipe, plan, loaded, dataset, reward_funcs, launch, folder)


# ----------------------------------------------------------------------------- stages


def prepare_data(recipe: Recipe) -> tuple[Any, list[Any]]:
    """The training questions and the recipe's reward functions, each tried once on sample
    completions (a reward that raises or returns NaN fails now, not at step 1)."""
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    check_cold_start_data(recipe.cold_start, dataset.column_names)
    try_rewards_on_samples(reward_funcs, dataset, recipe.layout)
    return dataset, reward_funcs


def check_machine(recipe: Recipe) -> None:
    """Fail now if the model, the engine or a tracker of logging.report_to cannot run here, or the model is
    one not meant to be trained."""
    check_reporters(recipe.logging)
    check_model_can_load(recipe)
    if recipe.model.init == "random" and not recipe.model.train_random_init:
        raise RecipeError("model.init is 'random': its weights are noise, made for measuring speed and memory with "
                          "python -m grpo_r1.bench; set model.train_random_init=true to train it anyway")
    check_engine(engine_settings(recipe), recipe.model.name_or_path)


def start_processes(recipe: Recipe, launch: Launch) -> Launch:
    """Under accelerate launch: refuse what cannot run on several processes and join the process
    group. Returns the launch as it really runs: on the CPU when training.use_cpu says so, and on
    a CPU accelerate ignores FSDP and DeepSpeed and runs DDP over gloo."""
    if recipe.training.get("use_cpu"):
        launch = dataclasses.replace(launch, cpu=True)
    if launch.cpu and launch.sharding != "none":
        if launch.is_main:
            logger.info("on a CPU accelerate runs the %s config as DDP over gloo (no sharding)", launch.sharding)
        launch = dataclasses.replace(launch, sharding="none", fsdp_version=None, zero_stage=None, fsdp_offload=False)
    check_launch(recipe, launch)
    join(launch)
    return launch


def plan_run(recipe: Recipe, launch: Launch, *, resume: str | Path | None, recipe_name: str,
             overwrite: bool) -> RunPlan:
    """The run folder and name every process agrees on; with `resume`, the run and checkpoint to continue."""
    run_name = agree(launch, recipe.logging.run_name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(recipe.run.output_dir or Path("runs") / run_name)
    if resume is None:
        on_main_then_share(launch, lambda: check_run_dir(run_dir, overwrite))
        return RunPlan(run_dir, run_name, None)
    resuming = on_main_then_share(launch, lambda: _announced(plan_resume(recipe, resume, recipe_name,
                                                                               processes=launch.world_size)))
    return RunPlan(resuming.run_dir, resuming.run_name, resuming)


def load_seeded_model(recipe: Recipe, launch: Launch) -> Any:
    """The model with a fresh LoRA adapter whose random init follows run.seed (same seed, same run)."""
    if recipe.model.backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and TRL; must come before the trainer is built)
    set_seed(recipe.run.seed)
    return load_model(recipe, launch=launch)


def open_run_folder(recipe: Recipe, plan: RunPlan, folder: RunFolder, launch: Launch, batch: EffectiveBatch, *,
                    overwrite: bool) -> None:
    """Rank 0 makes the run folder (replacing or rewinding it as asked) and writes recipe.yaml; the
    other processes wait, then find it ready."""
    if launch.is_main:
        if overwrite and plan.run_dir.exists():
            shutil.rmtree(plan.run_dir)  # only now: a run that fails to start loses nothing
        if plan.resuming is not None:
            rewind_run_folder(plan.resuming)  # metrics.jsonl back to the checkpoint's step
        folder.track(plan.run_dir)  # what a run that fails before its first step must leave as it found it
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        logger.info("%s; %s", launch.describe(), batch.describe())
    barrier(launch)


def run_grpo(recipe: Recipe, plan: RunPlan, loaded: Any, dataset: Any, reward_funcs: list[Any], launch: Launch,
             folder: RunFolder) -> TrainResult:
    """Build the trainer with its engine and callbacks, train, save the adapter and draw the curves."""
    run_dir = plan.run_dir
    # Only rank 0 starts W&B; transformers' W&B callback logs from rank 0 only as well.
    wandb_run = (start_wandb(recipe.logging, plan.run_name, run_dir, recipe.to_dict(), resume=plan.resuming is not None)
                 if launch.is_main else None)
    engine = None  # set up inside the try: a failure while building the trainer still finishes W&B and frees the engine
    interrupted = False
    try:
        args = grpo_config(recipe, run_dir / "checkpoints", plan.run_name, loaded.dtype, cpu=launch.cpu)
        engine = engine_from_recipe(recipe, loaded, processes=launch.world_size,
                                    dataset=dataset)  # None: TRL's generate
        guards = LearningSignalGuards(recipe.guards, run_dir, engine=recipe.generation.engine,
                                      resampling=recipe.generation.resample_equal_groups > 0)
        callbacks = [MetricsFileCallback(run_dir), folder, guards]  # folder: from the first step on, the run is kept
        trainer, _ = build_trainer(recipe, loaded, dataset, reward_funcs, args, engine=engine, callbacks=callbacks)
        if recipe.logging.console == "compact":
            use_compact_console(trainer)
        log_tensorboard_into(trainer, run_dir)
        if recipe.logging.completions_every:
            trainer.add_callback(CompletionsLogCallback(trainer, every=recipe.logging.completions_every,
                                                        run_dir=run_dir))
        install_checkpointing(trainer, run_dir)
        if plan.resuming is not None:
            restore_grpo_state(trainer, plan.resuming.checkpoint)
        stopper = StopOnInterrupt()
        trainer.add_callback(stopper)
        _fit(trainer, stopper, run_dir, plan.resuming)
        adapter_dir = run_dir / ADAPTER_DIR
        save_adapter(trainer, loaded.tokenizer, adapter_dir, launch)
        if launch.is_main:
            write_adapter_card(recipe, run_dir, adapter_dir, trainer.state.global_step)
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


# ----------------------------------------------------------------------------- parts of the stages


def _fit(trainer: Any, stopper: StopOnInterrupt, run_dir: Path, resuming: ResumePlan | None) -> None:
    """trainer.train(), from the resumed checkpoint if any; raises TrainingInterrupted when a
    Ctrl-C stopped it before max_steps (saved=True) or a second one aborted it (saved=False)."""
    try:
        with stopper.catching_sigint():
            trainer.train(resume_from_checkpoint=str(resuming.checkpoint) if resuming is not None else None)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir, latest_checkpoint(run_dir), trainer.state.global_step, saved=False) from None
    if stopper.requested and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingInterrupted(run_dir, latest_checkpoint(run_dir), trainer.state.global_step, saved=True)


def save_adapter(trainer: Any, tokenizer: Any, adapter_dir: Path, launch: Launch) -> None:
    """Save the trained adapter and the tokenizer into `adapter_dir`. Every process must call it
    (FSDP and ZeRO-3 gather the sharded weights for it); rank 0 writes the files."""
    if trainer.is_fsdp_enabled:
        # Checkpoints use SHARDED_STATE_DICT, with which save_model writes nothing: gather the whole adapter.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter_dir))
    if launch.is_main:
        tokenizer.save_pretrained(str(adapter_dir))


def write_plots(run_dir: Path) -> None:
    """The run's curves as PNGs in <run>/plots; a run without logged steps gets none, and says so."""
    try:
        plot_run(run_dir)
    except GrpoR1Error as e:
        logger.info("no plots: %s", e)


def _announced(plan: ResumePlan) -> ResumePlan:
    logger.info("resuming %s from %s", plan.run_dir, plan.checkpoint.name)
    return plan


def _alike_everywhere(check: Any) -> Any:
    """Run a check every process runs alike: its refusal is printed once, by rank 0."""
    try:
        return check()
    except GrpoR1Error as e:
        e.on_every_process = True
        raise


__all__ = ["ADAPTER_DIR", "METRICS_FILE", "TrainResult", "train"]
