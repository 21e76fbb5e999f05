"""Measure GRPO steps of a recipe (the library behind `python -m grpo_r1.bench`).

`run_bench` runs `warmup` + `steps` real GRPO steps of the recipe (its model, LoRA, data, rewards,
engine and training settings; no W&B, no checkpoints, no cold start: only GRPO steps are
measured) in this process and returns

    s/step: the median of the measured steps, with their mean, min and max
    questions/s, completion tokens/s                  at the median step
    peak allocated / reserved GPU memory              over the measured steps (CUDA only)
    the split of a step: generation, reward, reference + old logprobs, other scoring,
    forward + backward, optimizer                     (grpo_r1.trainer.timing), the median of each
    achieved TFLOP/s of the loss's forward + backward and of the scoring forwards, against a
    bf16 matrix product timed on the device first; the decode's weight bytes/s, against a
    device-to-device copy (grpo_r1.throughput states the formulas)
    loss, grad_norm and TRL's frac_reward_zero_std: a bench whose groups all scored alike had
    zero advantages and zero gradients, did not time the real path, and says so (`warnings`)
    per_step: every step's split, tokens and padded widths, memory, allocator retries and
    device mallocs/frees, torch.compile frames compiled, Python's full collections

`variant_recipe` makes the plain-TRL and Unsloth variants of the same shape, and `format_results`
sets variants side by side. A model at random init (`model.init: random`) measures speed and
memory without weights: its completions never end early, the worst case; its learning rewards
pay every completion alike, so the bench recipes add `rewards.benchmark:text_hash`, a reward
that varies.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters as dynamo_counters
from transformers import TrainerCallback
from trl import GRPOConfig

from grpo_r1.data import load_questions
from grpo_r1.engines import check_engine, engine_from_recipe, engine_settings
from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.model import check_model_can_load, load_model
from grpo_r1.recipe import Recipe
from grpo_r1.scoring import load_reward_functions
from grpo_r1.throughput import (
    DECODE_FORMULA,
    FLOP_FORMULA,
    ModelCounts,
    TokenCounter,
    count_model,
    decode_bytes,
    forward_flops,
    measure_device_peaks,
    rate,
    train_flops,
)
from grpo_r1.trainer.build import build_trainer
from grpo_r1.trainer.grpo_config import check_training, grpo_config

VARIANTS = ("grpo_r1", "trl", "unsloth")
PHASES = ("generation", "reward", "logprobs", "other_scoring", "forward_backward", "optimizer")
# The keys of `training:` that fix the shape and the objective; a "trl" variant keeps only these
# and takes TRL's defaults for the rest (optimizer, checkpointing, precision tricks).
SHAPE_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
              "generation_batch_size", "beta", "learning_rate", "num_iterations")


class BenchOutOfMemory(GrpoR1Error):
    """A measured step ran out of GPU memory (the message says how much it asked for and what to lower)."""


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
              variant: str = "grpo_r1", measure_peaks: bool = True,
              before_steps: Callable[[Recipe, Any, Any, list[Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run `warmup + steps` GRPO steps of `recipe` in this process and return the figures (see the module doc).

    `measure_peaks`: time a matrix product and a copy on the device first, the ceilings the
    achieved FLOP/s and bytes/s are set against (grpo_r1.throughput.measure_device_peaks).
    `before_steps(recipe, loaded, dataset, reward_funcs)`: called once the model is loaded, before the
    trainer is built (the planner's worst-case preflight); what it returns is the result's "before_steps",
    and what it raises ends the bench.
    """
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
    before = before_steps(recipe, loaded, dataset, reward_funcs) if before_steps is not None else None
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")  # the trainer's
    peaks = measure_device_peaks(device, loaded.dtype) if measure_peaks else None
    workdir = Path(tempfile.mkdtemp(prefix="grpo_r1_bench_"))
    args = grpo_config(recipe, workdir, f"bench-{variant}", loaded.dtype, cpu=not cuda, max_steps=warmup + steps,
                       save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True)
    engine = engine_from_recipe(recipe, loaded, dataset=dataset)
    tokens = TokenCounter(loaded.model)
    probe = _StepProbe(tokens)
    trainer, timer = build_trainer(recipe, loaded, dataset, reward_funcs, args, engine=engine, callbacks=[probe])
    tokens.watch(trainer)
    started = time.perf_counter()
    try:
        trainer.train()
        merged = bool(getattr(engine, "merged", False) and getattr(engine, "uses_static_decoder", False))
    except torch.OutOfMemoryError as e:
        raise BenchOutOfMemory(f"{variant}: out of GPU memory ({str(e).splitlines()[0][:160]}); lower the shape or "
                          f"raise --gpu-mem") from None
    finally:
        tokens.close()
        if engine is not None:
            engine.close()
    wall = time.perf_counter() - started
    checkpointing = bool(recipe.model.gradient_checkpointing) or bool(
        getattr(loaded.model, "is_gradient_checkpointing", False))
    counts = count_model(loaded.model, merged=merged, compute_dtype=loaded.dtype)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    per_step = step_records(timer.history, probe.records, logs, counts, checkpointing=checkpointing)
    measured = per_step[warmup:]
    args = trainer.args
    completions_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    step_times = [h["step_s"] for h in measured]
    step_s = statistics.median(step_times)
    mean_length = statistics.mean(h.get("mean_completion_length", 0.0) for h in measured)
    result = {
        "variant": variant,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_mem_cap_gib": gpu_mem,
        "model": recipe.model.architecture if recipe.model.init == "random" else recipe.model.name_or_path,
        "init": recipe.model.init,
        "backend": recipe.model.backend,
        "engine": recipe.generation.engine,
        "merged_decoder": merged,
        "load_in_4bit": recipe.model.load_in_4bit,
        "gradient_checkpointing": recipe.model.gradient_checkpointing,
        "lora_r": recipe.lora.r,
        "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "rewards": [spec.name for spec in recipe.rewards],
        "prompts_per_step": completions_per_step // recipe.generation.num_generations,
        "num_generations": recipe.generation.num_generations,
        "max_completion_length": recipe.generation.max_completion_length,
        "beta": args.beta,
        "steps": steps,
        "warmup": warmup,
        "s_per_step": step_s,  # the median of the measured steps
        "s_per_step_mean": statistics.mean(step_times),
        "s_per_step_min": min(step_times),
        "s_per_step_max": max(step_times),
        "questions_per_s": completions_per_step / recipe.generation.num_generations / step_s,
        "completion_tokens_per_s": mean_length * completions_per_step / step_s,
        "mean_completion_length": mean_length,
        "phases_s": phase_split(measured, statistics.median),
        "phases_s_mean": phase_split(measured, statistics.mean),
        "warmup_s": sum(h["step_s"] for h in per_step[:warmup]),
        "wall_s": wall,
        "peak_allocated_gib": _max_or_none(h.get("peak_allocated_gib") for h in measured),
        "peak_reserved_gib": _max_or_none(h.get("peak_reserved_gib") for h in measured),
        "device_peaks": peaks,
        "model_counts": asdict(counts),
        "formulas": {"flops": FLOP_FORMULA, "decode": DECODE_FORMULA},
        "checkpointing_recompute": checkpointing,
        "train_tflops_per_s": _median_or_none(h.get("train_tflops_per_s") for h in measured),
        "train_model_tflops_per_s": _median_or_none(h.get("train_model_tflops_per_s") for h in measured),
        "scoring_tflops_per_s": _median_or_none(h.get("scoring_tflops_per_s") for h in measured),
        "decode_gb_s": _median_or_none(h.get("decode_gb_s") for h in measured),
        "train_tokens_per_step": _median_or_none(h.get("train_tokens") for h in measured),
        "loss_median": _median_or_none(h.get("loss") for h in measured),
        "grad_norm_median": _median_or_none(h.get("grad_norm") for h in measured),
        "frac_reward_zero_std_mean": _mean_or_none(h.get("frac_reward_zero_std") for h in measured),
        "per_step": per_step,
        "before_steps": before,
    }
    if peaks is not None:
        for key, ceiling, name in (("train_tflops_per_s", "matmul_tflops", "train_of_matmul"),
                                   ("scoring_tflops_per_s", "matmul_tflops", "scoring_of_matmul"),
                                   ("decode_gb_s", "copy_gb_s", "decode_of_copy")):
            value = result[key]
            result[name] = None if value is None else value / peaks[ceiling]
    result["zero_advantages"] = zero_advantages(measured)
    result["warnings"] = bench_warnings(result, measured)
    del trainer, engine, loaded
    shutil.rmtree(workdir, ignore_errors=True)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def step_records(history: list[dict[str, float]], probes: list[dict[str, Any]], logs: list[dict[str, Any]],
                 counts: ModelCounts, *, checkpointing: bool) -> list[dict[str, Any]]:
    """One record per step: StepTimer's split, the probe's tokens and memory, TRL's logged loss, and the rates.

    The rates: the loss's forward + backward FLOPs over its time (training_s - optimizer_s), the
    scoring forwards' FLOPs over logprobs_s, and the decode's weight bytes (the round's longest
    completion as decode steps) over generation_s (grpo_r1.throughput's formulas).
    """
    records = []
    for index, timing in enumerate(history):
        record: dict[str, Any] = {"step": index + 1, **timing}
        probe = probes[index] if index < len(probes) else {}
        log = logs[index] if index < len(logs) else {}
        record.update({key: value for key, value in probe.items() if key != "tokens"})
        tokens = probe.get("tokens")
        for ours, theirs in (("loss", "loss"), ("grad_norm", "grad_norm"), ("reward_std", "reward_std"),
                             ("frac_reward_zero_std", "frac_reward_zero_std"),
                             ("mean_completion_length", "completions/mean_length"),
                             ("max_completion_length", "completions/max_length")):
            if isinstance(log.get(theirs), (int, float)):
                record[ours] = float(log[theirs])
        if tokens is not None:
            record["train_tokens"] = tokens["train_body"]
            record["train_head_tokens"] = tokens["train_head"]
            record["train_widths"] = tokens["train_widths"]
            record["scoring_tokens"] = tokens["score_body"]
            record["scoring_head_tokens"] = tokens["score_head"]
            fwd_bwd_s = timing.get("training_s", 0.0) - timing.get("optimizer_s", 0.0)
            executed = train_flops(counts, tokens["train_body"], tokens["train_head"], checkpointing=checkpointing)
            needed = train_flops(counts, tokens["train_body"], tokens["train_head"], checkpointing=False)
            scoring = forward_flops(counts, tokens["score_body"], tokens["score_head"])
            record["train_tflop"] = executed / 1e12
            record["train_tflops_per_s"] = _scaled(rate(executed, fwd_bwd_s), 1e12)
            record["train_model_tflops_per_s"] = _scaled(rate(needed, fwd_bwd_s), 1e12)
            record["scoring_tflops_per_s"] = _scaled(rate(scoring, timing.get("logprobs_s", 0.0)), 1e12)
        decode_steps = int(record.get("max_completion_length", 0))
        record["decode_gb_s"] = _scaled(rate(decode_bytes(counts, decode_steps), timing.get("generation_s", 0.0)),
                                        1e9)
        records.append(record)
    return records


def zero_advantages(measured: list[dict[str, Any]]) -> bool:
    """Whether every measured step had zero advantages: every group scored alike, or every gradient was 0."""
    fractions = [h["frac_reward_zero_std"] for h in measured if "frac_reward_zero_std" in h]
    norms = [h["grad_norm"] for h in measured if "grad_norm" in h]
    return bool((fractions and min(fractions) >= 1.0) or (norms and max(norms) == 0.0))


def bench_warnings(result: dict[str, Any], measured: list[dict[str, Any]]) -> list[str]:
    """What makes these figures untrustworthy, each with its fix."""
    warnings = []
    if result["zero_advantages"]:
        warnings.append(
            f"every group of the measured steps scored its completions alike (frac_reward_zero_std "
            f"{result['frac_reward_zero_std_mean']}, grad_norm {result['grad_norm_median']}): the advantages and "
            "gradients were zero, so these steps did not time the path a real run takes; add a reward that "
            "varies, e.g. rewards: [{name: rewards.benchmark:text_hash}] (rewards/benchmark.py)")
    if result["steps"] < 5:
        warnings.append(f"only {result['steps']} measured steps: take --steps 5 or more for a median worth reporting")
    compiles = sum(h.get("compiles", 0) for h in measured)
    if compiles:
        warnings.append(f"torch compiled {compiles} time(s) during the measured steps (see per_step 'compiles'): "
                        "raise --warmup, or find the shape that changed (TORCH_LOGS=recompiles)")
    return warnings


def phase_split(history: list[dict[str, float]], average: Any = statistics.mean) -> dict[str, float]:
    """Seconds per step in each phase, from StepTimer records, averaged with `average`.

    With the mean (the default) the phases add up to the mean step; the median of each phase
    (what the table shows) need not add up to the median step exactly.
    """
    def per_step(key: str) -> list[float]:
        return [h.get(key, 0.0) for h in history]

    split = [
        ("generation", per_step("generation_s")),
        ("reward", per_step("reward_s")),
        ("logprobs", per_step("logprobs_s")),
        ("other_scoring", [max(0.0, h.get("scoring_s", 0.0) - h.get("reward_s", 0.0) - h.get("logprobs_s", 0.0))
                           for h in history]),
        ("forward_backward", [max(0.0, h.get("training_s", 0.0) - h.get("optimizer_s", 0.0)) for h in history]),
        ("optimizer", per_step("optimizer_s")),
    ]
    return {phase: average(values) for phase, values in split}


class _StepProbe(TrainerCallback):
    """Per step: the tokens the forwards processed, peak and reserved GPU memory, the allocator's retries and
    device mallocs/frees, torch.compile's frames compiled, and Python's full garbage collections."""

    def __init__(self, tokens: TokenCounter) -> None:
        self.tokens = tokens
        self.records: list[dict[str, Any]] = []
        self._start: dict[str, int] = {}

    def _counters(self) -> dict[str, int]:
        values = {"compiles": int(dynamo_counters["frames"]["total"]), "gc_full": gc.get_stats()[2]["collections"]}
        if torch.cuda.is_available():
            stats = torch.cuda.memory_stats()
            for key in ("num_alloc_retries", "num_device_alloc", "num_device_free"):
                values[key] = int(stats.get(key, 0))
        return values

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.tokens.take()  # anything before the step (none expected) is not this step's
        self._start = self._counters()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self._counters()
        record: dict[str, Any] = {key: now[key] - self._start.get(key, now[key]) for key in now}
        if torch.cuda.is_available():
            record["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            record["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            record["reserved_gib"] = torch.cuda.memory_reserved() / 2**30
        record["tokens"] = self.tokens.take()
        self.records.append(record)


def _figure(value: float) -> str:
    """Three significant figures, without an exponent from 100 up (201, 4300, 0.0123)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def _values(values: Any) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float))]


def _median_or_none(values: Any) -> float | None:
    found = _values(values)
    return statistics.median(found) if found else None


def _mean_or_none(values: Any) -> float | None:
    found = _values(values)
    return statistics.mean(found) if found else None


def _max_or_none(values: Any) -> float | None:
    found = _values(values)
    return max(found) if found else None


def format_results(results: list[dict[str, Any]]) -> str:
    """The figures of one or more variants as a table, with the speed-up of grpo_r1 over each, then any warnings."""
    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def of(value: float | None, fraction: float | None) -> str:
        if value is None:
            return "-"
        return _figure(value) + ("" if fraction is None else f" ({fraction:.0%})")

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    columns = [r["variant"] for r in results]
    rows = [
        ("s/step (median)", [f"{r['s_per_step']:.3f}" for r in results]),
        ("  min-max", [f"{r.get('s_per_step_min', r['s_per_step']):.2f}-{r.get('s_per_step_max', r['s_per_step']):.2f}"
                       for r in results]),
        ("questions/s", [f"{r['questions_per_s']:.3f}" for r in results]),
        ("completion tokens/s", [f"{r['completion_tokens_per_s']:.0f}" for r in results]),
        ("peak allocated GiB", [gib(r["peak_allocated_gib"]) for r in results]),
        ("peak reserved GiB", [gib(r["peak_reserved_gib"]) for r in results]),
    ] + [(f"  {phase} s", [f"{r['phases_s'][phase]:.3f}" for r in results]) for phase in PHASES] + [
        ("fwd+bwd TFLOP/s (of matmul)", [of(r.get("train_tflops_per_s"), r.get("train_of_matmul"))
                                         for r in results]),
        ("  without recompute", [of(r.get("train_model_tflops_per_s"), None) for r in results]),
        ("logprobs TFLOP/s (of matmul)", [of(r.get("scoring_tflops_per_s"), r.get("scoring_of_matmul"))
                                          for r in results]),
        ("decode GB/s (of copy)", [of(r.get("decode_gb_s"), r.get("decode_of_copy")) for r in results]),
        ("loss (median)", [number(r.get("loss_median"), ".3g") for r in results]),
        ("grad_norm (median)", [number(r.get("grad_norm_median"), ".3g") for r in results]),
        ("groups scored alike", [number(r.get("frac_reward_zero_std_mean"), ".0%") for r in results]),
    ]
    base = next((r for r in results if r["variant"] == "grpo_r1"), None)
    if base is not None and len(results) > 1:
        rows.append(("grpo_r1 speed-up", [f"{r['s_per_step'] / base['s_per_step']:.2f}x" for r in results]))
    width = max(len(name) for name, _ in rows) + 2
    column = max(14, *(len(v) + 2 for _, values in rows for v in values))
    lines = [" " * width + "".join(f"{c:>{column}}" for c in columns)]
    lines += [name.ljust(width) + "".join(f"{v:>{column}}" for v in values) for name, values in rows]
    first = results[0]
    shape = (f"{first['model']} ({first['init']}), {first['prompts_per_step']} prompt(s) x "
             f"{first['num_generations']} x "
             f"{first['max_completion_length']} tokens, LoRA r{first['lora_r']}, beta {first['beta']}, "
             f"median of {first['steps']} steps after {first['warmup']} warm-up, {first['device']}"
             + (f", capped at {first['gpu_mem_cap_gib']} GiB" if first["gpu_mem_cap_gib"] else ""))
    peaks = first.get("device_peaks")
    if peaks:
        shape += (f"\nmeasured here: {peaks['matmul_dtype']} matmul {peaks['matmul_shape']} "
                  f"{_figure(peaks['matmul_tflops'])} TFLOP/s, device copy {_figure(peaks['copy_gb_s'])} GB/s "
                  "(read + write)")
    warnings = [f"warning: {r['variant']}: {w}" for r in results for w in r.get("warnings", [])]
    return "\n".join([shape, *lines, *warnings])


def format_steps(result: dict[str, Any]) -> str:
    """Every step of one variant on a line: the split, the training width, memory, allocator and compile counts."""
    lines = [f"{result['variant']}, each step (the first {result['warmup']} are warm-up):"]
    for h in result.get("per_step", []):
        fwd_bwd = max(0.0, h.get("training_s", 0.0) - h.get("optimizer_s", 0.0))
        parts = [f"step {h['step']:>2}: {h['step_s']:6.2f} s = gen {h.get('generation_s', 0.0):.2f}",
                 f"logprobs {h.get('logprobs_s', 0.0):.2f}", f"fwd+bwd {fwd_bwd:.2f}",
                 f"opt {h.get('optimizer_s', 0.0):.3f}"]
        if h.get("train_widths"):
            parts.append(f"width {'/'.join(str(w) for w in h['train_widths'])}")
        if h.get("train_tflops_per_s") is not None:
            parts.append(f"{_figure(h['train_tflops_per_s'])} TFLOP/s")
        parts.append(f"compiles {h.get('compiles', 0)}")
        if "num_alloc_retries" in h:
            parts.append(f"alloc retries {h['num_alloc_retries']} mallocs {h.get('num_device_alloc', 0)} "
                         f"frees {h.get('num_device_free', 0)}")
            parts.append(f"reserved {h.get('peak_reserved_gib', 0.0):.1f} GiB")
        parts.append(f"gc {h.get('gc_full', 0)}")
        if "loss" in h:
            parts.append(f"loss {h['loss']:.3g} grad_norm {h.get('grad_norm', 0.0):.3g}")
        lines.append(", ".join(parts))
    return "\n".join(lines)
