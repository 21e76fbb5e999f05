"""Measure GRPO steps of a recipe (the library behind `python -m grpo_r1.bench`).

`run_bench` runs `warmup` + `steps` real GRPO steps of the recipe (its model, LoRA, data, rewards,
engine and training settings; no W&B, no checkpoints, no cold start: only GRPO steps are
measured) in this process and returns

    s/step, questions/s, completion tokens/s          over the measured steps
    peak allocated / reserved GPU memory              over the measured steps (CUDA only)
    the split of a step: generation, reward, reference + old logprobs, other scoring,
    forward + backward, optimizer                     (grpo_r1.trainer.timing)

`variant_recipe` makes the plain-TRL and Unsloth variants of the same shape, and `format_results`
sets variants side by side. A model at random init (`model.init: random`) measures speed and
memory without weights: its completions never end early, the worst case.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig

from grpo_r1.data import load_questions
from grpo_r1.engines import check_engine, engine_from_recipe, engine_settings
from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.model import check_model_can_load, load_model
from grpo_r1.recipe import Recipe
from grpo_r1.scoring import load_reward_functions
from grpo_r1.trainer.build import build_trainer
from grpo_r1.trainer.grpo_config import check_training, grpo_config

VARIANTS = ("grpo_r1", "trl", "unsloth")
PHASES = ("generation", "reward", "logprobs", "other_scoring", "forward_backward", "optimizer")
# The keys of `training:` that fix the shape and the objective; a "trl" variant keeps only these
# and takes TRL's defaults for the rest (optimizer, checkpointing, precision tricks).
SHAPE_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
              "generation_batch_size", "beta", "learning_rate", "num_iterations")


def variant_recipe(recipe: Recipe, variant: str) -> Recipe:
    """The recipe as variant `variant` runs it: "grpo_r1" unchanged; "trl" and "unsloth" keep the
    model, LoRA, data, rewards and generation shape but swap the machinery (see the module doc)."""
    if variant == "grpo_r1":
        return recipe
    if variant not in VARIANTS:
        raise RecipeError(f"--compare takes {', '.join(VARIANTS[1:])}; got {variant!r}")
    training = {k: v for k, v in recipe.training.items() if k in SHAPE_KEYS}
    if variant == "trl":
        trl_checkpointing = GRPOConfig.__dataclass_fields__["gradient_checkpointing"].default
        model = replace(recipe.model, backend="transformers", gradient_checkpointing=trl_checkpointing)
        return replace(recipe, model=model, generation=replace(recipe.generation, engine="hf"), training=training)
    model = replace(recipe.model, backend="unsloth", gradient_checkpointing="unsloth")
    return replace(recipe, model=model, generation=replace(recipe.generation, engine="hf"), training=training)


def run_bench(recipe: Recipe, *, steps: int = 5, warmup: int = 2, gpu_mem: float | None = None,
              variant: str = "grpo_r1") -> dict[str, Any]:
    """Run `warmup + steps` GRPO steps of `recipe` in this process and return the figures."""
    if steps < 1 or warmup < 0:
        raise RecipeError(f"--steps must be at least 1 and --warmup at least 0; got {steps} and {warmup}")
    recipe = variant_recipe(recipe, variant)
    check_training(recipe)
    check_model_can_load(recipe)  # before Unsloth's import: its refusal on a CPU is the clearer message
    if recipe.model.backend == "unsloth":
        import unsloth  # noqa: F401  (must patch transformers and TRL before they are used)
    cuda = torch.cuda.is_available()
    if gpu_mem is not None:
        if not cuda:
            raise RecipeError("--gpu-mem caps GPU memory, and no CUDA GPU is visible; leave it out on a CPU")
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_mem * 2**30 / total))

    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    check_engine(engine_settings(recipe), recipe.model.name_or_path)
    loaded = load_model(recipe)
    workdir = Path(tempfile.mkdtemp(prefix="grpo_r1_bench_"))
    args = grpo_config(recipe, workdir, f"bench-{variant}", loaded.dtype, cpu=not cuda, max_steps=warmup + steps,
                       save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True)
    engine = engine_from_recipe(recipe, loaded, dataset=dataset)
    memory = _PeakMemory(start_step=warmup)
    trainer, timer = build_trainer(recipe, loaded, dataset, reward_funcs, args, engine=engine, callbacks=[memory])
    started = time.perf_counter()
    try:
        trainer.train()
    except torch.OutOfMemoryError as e:
        raise GrpoR1Error(f"{variant}: out of GPU memory ({str(e).splitlines()[0][:160]}); lower the shape or "
                          f"raise --gpu-mem") from None
    finally:
        if engine is not None:
            engine.close()
    wall = time.perf_counter() - started
    measured = timer.history[warmup:]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry][warmup:]
    args = trainer.args
    completions_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    step_s = statistics.mean(h["step_s"] for h in measured)
    tokens = statistics.mean(entry.get("completions/mean_length", 0.0) for entry in logs) * completions_per_step
    result = {
        "variant": variant,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_mem_cap_gib": gpu_mem,
        "model": recipe.model.architecture if recipe.model.init == "random" else recipe.model.name_or_path,
        "init": recipe.model.init,
        "backend": recipe.model.backend,
        "engine": recipe.generation.engine,
        "load_in_4bit": recipe.model.load_in_4bit,
        "gradient_checkpointing": recipe.model.gradient_checkpointing,
        "lora_r": recipe.lora.r,
        "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "prompts_per_step": completions_per_step // recipe.generation.num_generations,
        "num_generations": recipe.generation.num_generations,
        "max_completion_length": recipe.generation.max_completion_length,
        "beta": args.beta,
        "steps": steps,
        "warmup": warmup,
        "s_per_step": step_s,
        "s_per_step_min": min(h["step_s"] for h in measured),
        "questions_per_s": completions_per_step / recipe.generation.num_generations / step_s,
        "completion_tokens_per_s": tokens / step_s,
        "mean_completion_length": tokens / completions_per_step,
        "phases_s": phase_split(measured),
        "warmup_s": sum(h["step_s"] for h in timer.history[:warmup]),
        "wall_s": wall,
        "peak_allocated_gib": memory.peak_allocated,
        "peak_reserved_gib": memory.peak_reserved,
    }
    del trainer, engine, loaded
    shutil.rmtree(workdir, ignore_errors=True)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def phase_split(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per step in each phase, from StepTimer records; they add up to the step."""
    def mean(key: str) -> float:
        return statistics.mean(h.get(key, 0.0) for h in history)

    scoring, training = mean("scoring_s"), mean("training_s")
    reward, logprobs, optimizer = mean("reward_s"), mean("logprobs_s"), mean("optimizer_s")
    return {
        "generation": mean("generation_s"),
        "reward": reward,
        "logprobs": logprobs,
        "other_scoring": max(0.0, scoring - reward - logprobs),
        "forward_backward": max(0.0, training - optimizer),
        "optimizer": optimizer,
    }


class _PeakMemory(TrainerCallback):
    """Reset CUDA's peak counters when the first measured step begins; read them after each step."""

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step
        self.peak_allocated: float | None = None
        self.peak_reserved: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available() and state.global_step == self.start_step:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available() and state.global_step > self.start_step:
            self.peak_allocated = torch.cuda.max_memory_allocated() / 2**30
            self.peak_reserved = torch.cuda.max_memory_reserved() / 2**30


def format_results(results: list[dict[str, Any]]) -> str:
    """The figures of one or more variants as a table, with the speed-up of grpo_r1 over each."""
    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    columns = [r["variant"] for r in results]
    rows = [
        ("s/step", [f"{r['s_per_step']:.3f}" for r in results]),
        ("questions/s", [f"{r['questions_per_s']:.3f}" for r in results]),
        ("completion tokens/s", [f"{r['completion_tokens_per_s']:.0f}" for r in results]),
        ("peak allocated GiB", [gib(r["peak_allocated_gib"]) for r in results]),
        ("peak reserved GiB", [gib(r["peak_reserved_gib"]) for r in results]),
    ] + [(f"  {phase} s", [f"{r['phases_s'][phase]:.3f}" for r in results]) for phase in PHASES]
    base = next((r for r in results if r["variant"] == "grpo_r1"), None)
    if base is not None and len(results) > 1:
        rows.append(("grpo_r1 speed-up", [f"{r['s_per_step'] / base['s_per_step']:.2f}x" for r in results]))
    width = max(len(name) for name, _ in rows) + 2
    lines = [" " * width + "".join(f"{c:>14}" for c in columns)]
    lines += [name.ljust(width) + "".join(f"{v:>14}" for v in values) for name, values in rows]
    first = results[0]
    shape = (f"{first['model']} ({first['init']}), {first['prompts_per_step']} prompt(s) x "
             f"{first['num_generations']} x "
             f"{first['max_completion_length']} tokens, LoRA r{first['lora_r']}, beta {first['beta']}, "
             f"{first['steps']} steps after {first['warmup']} warm-up, {first['device']}"
             + (f", capped at {first['gpu_mem_cap_gib']} GiB" if first["gpu_mem_cap_gib"] else ""))
    return shape + "\n" + "\n".join(lines)
