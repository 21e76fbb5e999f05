"""Measure GRPO steps: `python -m grpo_r1.bench RECIPE.yaml [section.key=value ...] [options]`.

Runs `--warmup` + `--steps` real GRPO steps of the recipe (its model, LoRA, data, rewards,
engine and training settings; no W&B, no checkpoints, no cold start: only GRPO steps are
measured) and prints, and writes as JSON:

    s/step, questions/s, completion tokens/s          over the measured steps
    peak allocated / reserved GPU memory              over the measured steps (CUDA only)
    the split of a step: generation, reward, reference + old logprobs, other scoring,
    forward + backward, optimizer                     (grpo_r1.engines.timing)

Options:
    --steps N          measured steps (default 5); --warmup W steps first, not measured (default 2:
                       torch.compile and CUDA graphs are built during the first)
    --gpu-mem GiB      cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction)
                       to stand in for a smaller card, e.g. 24 for an RTX 4090
    --compare LIST     also run these variants of the same shape, each in its own process, and
                       print them side by side:  trl  (plain TRL: transformers + PEFT, TRL's own
                       generate and TRL's defaults for everything the shape does not fix) and
                       unsloth  (Unsloth's patched model and trainer, generation without vLLM)
    --out FILE         the JSON (default bench.json)

A model at random init (`model.init: random`, `model.architecture: qwen2.5-3b`, `model.tokenizer`)
measures speed and memory without weights: its completions never end early, the worst case.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.recipe import TRAINING_DEFAULTS, Recipe, load_recipe

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
    from trl import GRPOConfig

    training = {k: v for k, v in {**TRAINING_DEFAULTS, **recipe.training}.items() if k in SHAPE_KEYS}
    if variant == "trl":
        trl_checkpointing = GRPOConfig.__dataclass_fields__["gradient_checkpointing"].default
        model = replace(recipe.model, backend="transformers", gradient_checkpointing=trl_checkpointing)
        return replace(recipe, model=model, generation=replace(recipe.generation, engine="hf"), training=training)
    model = replace(recipe.model, backend="unsloth", gradient_checkpointing="unsloth")
    return replace(recipe, model=model, generation=replace(recipe.generation, engine="hf"), training=training)


def run_bench(recipe: Recipe, *, steps: int = 5, warmup: int = 2, gpu_mem: float | None = None,
              variant: str = "grpo_r1") -> dict[str, Any]:
    """Run `warmup + steps` GRPO steps of `recipe` in this process and return the figures."""
    import torch

    if steps < 1 or warmup < 0:
        raise RecipeError(f"--steps must be at least 1 and --warmup at least 0; got {steps} and {warmup}")
    recipe = variant_recipe(recipe, variant)
    from grpo_r1.model import check_model_can_load

    check_model_can_load(recipe)  # before Unsloth's import: its refusal on a CPU is the clearer message
    if recipe.model.backend == "unsloth":
        import unsloth  # noqa: F401  (must patch transformers and TRL before they are used)
    cuda = torch.cuda.is_available()
    if gpu_mem is not None:
        if not cuda:
            raise RecipeError("--gpu-mem caps GPU memory, and no CUDA GPU is visible; leave it out on a CPU")
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_mem * 2**30 / total))

    from trl import GRPOConfig, GRPOTrainer

    from grpo_r1.data import load_questions
    from grpo_r1.engines import engine_from_recipe, install_step_timer, make_rollout_func
    from grpo_r1.engines.build import check_engine
    from grpo_r1.model import load_model
    from grpo_r1.rewards import load_reward_functions
    from grpo_r1.train import grpo_config_kwargs

    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    check_engine(recipe)
    loaded = load_model(recipe)
    workdir = Path(tempfile.mkdtemp(prefix="grpo_r1_bench_"))
    kwargs = grpo_config_kwargs(recipe, workdir, f"bench-{variant}", loaded.dtype)
    kwargs.update(max_steps=warmup + steps, save_strategy="no", report_to="none", logging_steps=1,
                  disable_tqdm=True)
    engine = engine_from_recipe(recipe, loaded, dataset=dataset)
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=reward_funcs, args=GRPOConfig(**kwargs),
                          train_dataset=dataset, processing_class=loaded.tokenizer,
                          rollout_func=make_rollout_func(engine, logprob_check=recipe.generation.importance_sampling))
    timer = install_step_timer(trainer)
    memory = _PeakMemory(start_step=warmup)
    trainer.add_callback(memory)
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
        import torch

        if torch.cuda.is_available() and state.global_step == self.start_step:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

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
    shape = (f"{first['model']} ({first['init']}), {first['prompts_per_step']} prompt(s) x {first['num_generations']} x "
             f"{first['max_completion_length']} tokens, LoRA r{first['lora_r']}, beta {first['beta']}, "
             f"{first['steps']} steps after {first['warmup']} warm-up, {first['device']}"
             + (f", capped at {first['gpu_mem_cap_gib']} GiB" if first["gpu_mem_cap_gib"] else ""))
    return shape + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_r1.bench", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="path of the recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=5, help="measured steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (default 2)")
    parser.add_argument("--gpu-mem", type=float, help="cap GPU memory at this many GiB")
    parser.add_argument("--compare", default="", help="also run these variants: trl, unsloth (comma-separated)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default bench.json)")
    parser.add_argument("--variant", default="grpo_r1", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        compare = [v.strip() for v in args.compare.split(",") if v.strip()]
        for variant in compare:
            if variant not in VARIANTS[1:]:
                raise RecipeError(f"--compare takes {', '.join(VARIANTS[1:])}; got {variant!r}")
        results = [run_bench(recipe, steps=args.steps, warmup=args.warmup, gpu_mem=args.gpu_mem, variant=args.variant)]
        for variant in compare:
            results.append(_run_in_subprocess(args, variant))
    except GrpoR1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(results if compare else results[0], indent=2) + "\n")
    print(format_results([r for r in results if "error" not in r]))
    for failed in (r for r in results if "error" in r):
        print(f"{failed['variant']}: not measured: {failed['error']}")
    print(f"bench: figures in {args.out}")
    return 0


def _run_in_subprocess(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One variant in a fresh process: its own GPU memory, and no patches (Unsloth's) leak between variants."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "grpo_r1.bench", args.recipe, *args.overrides, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--variant", variant, "--out", str(out)]
        if args.gpu_mem is not None:
            cmd += ["--gpu-mem", str(args.gpu_mem)]
        print(f"bench: running the {variant} variant in its own process", flush=True)
        proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"variant": variant, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
        return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
