"""Auto-fit: the memory and speed settings that make a recipe's step the fastest that fits (the library
behind `python -m grpo_r1.plan` and `run.auto_fit: true`).

    plan = plan_recipe(recipe, PlanSettings(memory_gib=24))
    plan.best.overrides        # e.g. ["training.per_device_train_batch_size=24", ...]: the line to use

A candidate is the recipe with some of these settings (the levers) changed:

    micro_batch      training.per_device_train_batch_size, with gradient_accumulation_steps (and
                     steps_per_generation when the recipe sets it) changed to match, so an optimizer
                     step and a generation round take the same completions as before
    checkpointing    model.gradient_checkpointing on or off
    liger            training.use_liger_kernel: TRL's fused linear + GRPO loss, the vocabulary-wide
                     logits never whole (needs a CUDA GPU and liger-kernel)
    merged_weights   generation.merged_weights: the hf-compiled engine's merged decoder copy
    optim            training.optim: paged 8-bit AdamW or fused fp32 AdamW
    load_in_4bit     model.load_in_4bit: the base model in 4 bits (QLoRA; needs a CUDA GPU and bitsandbytes)
    unsloth          model.backend unsloth or transformers: Unsloth's patched model and LoRA kernels train
                     (with checkpointing, its offloaded kind), whichever engine samples; needs a CUDA GPU
                     and unsloth, and a generation.engine other than unsloth (its vLLM needs its backend)
    padding_free     model.padding_free shared_prompt or off: the scoring forwards packed, each question's
                     prompt once (grpo_r1.trainer.packing); the transformers backend and TRL's loss

The first four change how a step is computed, not what it computes (up to float rounding; with
training.loss_type bnpo the micro-batch also changes the loss's normaliser): they are
DEFAULT_LEVERS. `optim` and `load_in_4bit` change the numbers trained, so they are tried only when
named. `unsloth` and `padding_free` are tried only when named too (padding_free changes only float rounding,
but it is new and not yet measured on a GPU). Unsloth patches transformers and TRL in the process
that imports it, which a probe's process of its own allows, but a training process that has already
planned (run.auto_fit) would import it too late.

Each candidate runs in a process of its own, so that it sees the whole memory and nothing left by
the one before: the worst-case preflight step (grpo_r1.trainer.preflight) under the memory cap
says whether it fits, and a candidate that fits then runs `warmup + steps` real GRPO steps
(grpo_r1.benchmark), whose median is its step time. On a GPU the cap is real: the process is
limited to `memory_gib` (torch.cuda.set_per_process_memory_fraction) and an out-of-memory ends the
preflight. On a CPU the preflight's peak RSS is compared with `memory_gib`.

Not every combination is run. The levers' combinations are taken in turn, the recipe's own first;
in each, the micro-batch starts at the recipe's and grows while it fits and, when even that does
not fit, shrinks until one does. A candidate that holds at least as much memory in every lever as
one that did not fit, on the same model.backend, is not run ("skipped"). The pick is the fastest
candidate that fits; when the recipe's own settings fit and are within `margin` of it, they stay,
and otherwise, of the candidates within `margin` of the fastest, the one with the least memory at
the worst case.

The cold start (cold_start.steps) is not probed. Its batches are small beside a GRPO step's, but a
pick applies to it too: checkpointing turned off, for one.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from trl import GRPOConfig

from grpo_r1.benchmark import BenchOutOfMemory, run_bench
from grpo_r1.errors import GrpoR1Error, RecipeError
from grpo_r1.recipe import Recipe, recipe_from_dict
from grpo_r1.recipe.loading import apply_override
from grpo_r1.trainer.grpo_config import check_training
from grpo_r1.trainer.memory import is_out_of_memory
from grpo_r1.trainer.preflight import PreflightError, preflight_step

logger = logging.getLogger(__name__)

LEVERS = ("micro_batch", "checkpointing", "liger", "merged_weights", "optim", "load_in_4bit", "unsloth",
          "padding_free")
DEFAULT_LEVERS = ("micro_batch", "checkpointing", "liger", "merged_weights")
# The optimizers the optim lever switches between: 8-bit state (paged), or fused 32-bit.
OPTIMIZERS = ("paged_adamw_8bit", "adamw_torch_fused")

FITS, OUT_OF_MEMORY, FAILED, SKIPPED = "fits", "out of memory", "failed", "skipped"


@dataclass(frozen=True)
class PlanSettings:
    """What to try and how: the levers (LEVERS), the memory the run may use (GiB; None: all the device has),
    the steps each fitting candidate is timed over, and how much faster another candidate must be to replace
    the recipe's own settings (0.05: 5%)."""

    levers: tuple[str, ...] | None = None  # None: DEFAULT_LEVERS, those that cannot run here left out
    memory_gib: float | None = None
    steps: int = 3
    warmup: int = 1
    margin: float = 0.05
    micro_batches: tuple[int, ...] | None = None  # the micro_batch lever's values (default: see candidate_values)
    probe_timeout_s: float = 1800.0  # a probe's process that runs longer is stopped and counts as failed

    def __post_init__(self) -> None:
        if self.levers is None:
            return self._check_figures()
        unknown = [lever for lever in self.levers if lever not in LEVERS]
        if unknown or not self.levers:
            raise RecipeError(f"unknown lever {', '.join(map(repr, unknown))}; the levers are {', '.join(LEVERS)}"
                              if unknown else f"name at least one lever: {', '.join(LEVERS)}")
        self._check_figures()

    @property
    def named_levers(self) -> tuple[str, ...]:
        """The levers to try: those named, or DEFAULT_LEVERS."""
        return DEFAULT_LEVERS if self.levers is None else self.levers

    def _check_figures(self) -> None:
        if self.steps < 1 or self.warmup < 0:
            raise RecipeError(f"the planner times at least 1 step after 0 or more warm-up steps; got --steps "
                              f"{self.steps} and --warmup {self.warmup}")
        if self.memory_gib is not None and self.memory_gib <= 0:
            raise RecipeError(f"--mem is the memory the run may use, in GiB; got {self.memory_gib}")
        if not 0 <= self.margin < 1:
            raise RecipeError(f"the margin is a fraction of the step time, from 0 to below 1; got {self.margin}")


@dataclass(frozen=True)
class Candidate:
    """One setting of every lever: `settings` maps recipe keys to values, `memory` ranks each lever's value
    (0: the value that holds less memory; the micro-batch as itself), `overrides` are the changed ones as
    section.key=value."""

    settings: tuple[tuple[str, Any], ...]
    memory: tuple[int, ...]
    overrides: tuple[str, ...]
    backend: str = "transformers"  # candidates on different backends are not ranked against each other

    @property
    def micro_batch(self) -> int:
        """Completions per forward + backward."""
        return self.memory[-1]

    def uses_at_least(self, other: Candidate) -> bool:
        """Whether this candidate holds at least as much memory as `other` in every lever (never, on another
        backend: no lever's order is known across backends)."""
        return self.backend == other.backend and all(
            mine >= theirs for mine, theirs in zip(self.memory, other.memory, strict=True))

    def describe(self) -> str:
        """The candidate as its overrides, or "(the recipe as it is)"."""
        return " ".join(self.overrides) if self.overrides else "(the recipe as it is)"


@dataclass
class Probe:
    """What one candidate did: its status (FITS, OUT_OF_MEMORY, FAILED, SKIPPED), the preflight's
    worst-case peak and the cap (GiB), the median step time and the measured steps' peak allocated and
    reserved memory, and a note (why it failed or was skipped)."""

    candidate: Candidate
    status: str
    worst_case_peak_gib: float | None = None
    cap_gib: float | None = None
    s_per_step: float | None = None
    questions_per_s: float | None = None
    step_peak_allocated_gib: float | None = None
    step_peak_reserved_gib: float | None = None
    note: str = ""

    def describe(self) -> str:
        """One line: the candidate, its status and figures, and the note of one that did not fit."""
        figures = [f"{self.worst_case_peak_gib:.2f} GiB at the worst case" if self.worst_case_peak_gib else "",
                   f"{self.s_per_step:.2f} s/step" if self.s_per_step else ""]
        shown = "; ".join(f for f in figures if f)
        return (f"{self.candidate.describe()}: {self.status}" + (f", {shown}" if shown else "")
                + (f" ({self.note})" if self.note and self.status != FITS else ""))

    def as_dict(self) -> dict[str, Any]:
        """The probe as JSON-ready data: the candidate's overrides and settings, then every figure."""
        figures = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "candidate"}
        return {"overrides": list(self.candidate.overrides), "settings": dict(self.candidate.settings), **figures}


@dataclass
class Plan:
    """Every probe in the order run, and the pick (None when nothing fits)."""

    settings: PlanSettings
    probes: list[Probe] = field(default_factory=list)
    best: Probe | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what `python -m grpo_r1.plan --out` writes)."""
        return {"levers": list(self.settings.named_levers), "memory_gib": self.settings.memory_gib,
                "steps": self.settings.steps, "warmup": self.settings.warmup, "margin": self.settings.margin,
                "probes": [p.as_dict() for p in self.probes],
                "best": None if self.best is None else self.best.as_dict(), "reason": self.reason}


def plan_recipe(recipe: Recipe, settings: PlanSettings, *,
                run_probe: Callable[[Recipe, PlanSettings], dict[str, Any]] | None = None,
                on_probe: Callable[[Probe], None] = lambda probe: None) -> Plan:
    """Try the recipe's candidates (see the module doc) and pick the fastest that fits.

    `run_probe(recipe, settings)` runs one candidate and returns probe_candidate's dict (default: in a
    process of its own, probe_in_subprocess); `on_probe` hears each probe as it ends. Raises RecipeError when
    a named lever cannot be tried here or the recipe has nothing to vary."""
    run_probe = run_probe or probe_in_subprocess
    check_training(recipe)
    values = candidate_values(recipe, settings)
    plan = Plan(settings)
    failed: list[Candidate] = []

    def attempt(candidate: Candidate) -> Probe:
        blocker = next((f for f in failed if candidate.uses_at_least(f)), None)
        if blocker is not None:
            probe = Probe(candidate, SKIPPED,
                          note=f"holds at least the memory of {blocker.describe()}, which did not fit")
        else:
            try:
                result = run_probe(apply_candidate(recipe, candidate), settings)
            except RecipeError as exc:  # a combination TRL or a recipe check refuses: that candidate only
                result = {"status": FAILED, "note": str(exc)}
            probe = _probe_from(candidate, result)
            if probe.status == OUT_OF_MEMORY:
                failed.append(candidate)
        plan.probes.append(probe)
        on_probe(probe)
        return probe

    for combination in _combinations(values):
        sizes = values["micro_batch"]
        start = sizes.index(_own_micro_batch(recipe)) if _own_micro_batch(recipe) in sizes else 0
        first = attempt(_candidate(recipe, combination, sizes[start]))
        if first.status == FITS:
            for size in sizes[start + 1:]:
                if attempt(_candidate(recipe, combination, size)).status != FITS:
                    break
        elif first.status in (OUT_OF_MEMORY, SKIPPED):
            for size in reversed(sizes[:start]):
                if attempt(_candidate(recipe, combination, size)).status == FITS:
                    break
    plan.best, plan.reason = choose(plan.probes, settings.margin)
    return plan


def fit_recipe(recipe: Recipe) -> Recipe:
    """`run.auto_fit`: the recipe with the settings of the fastest candidate that fits this device, all of the
    device's memory allowed (each probe logged); RecipeError when none fits."""
    plan = plan_recipe(recipe, PlanSettings(), on_probe=lambda probe: logger.info("auto_fit: %s", probe.describe()))
    if plan.best is None:
        shown = "; ".join(p.describe()[:300] for p in plan.probes[:3])
        if plan.reason != "no candidate fits":
            raise RecipeError(f"run.auto_fit: {plan.reason} ({shown}); fix that, or set run.auto_fit=false")
        raise RecipeError(f"run.auto_fit: no candidate of {recipe.source} fits this device ({shown}); lower "
                          f"generation.max_completion_length or generation.num_generations, or run python -m "
                          f"grpo_r1.plan with --levers load_in_4bit to try a 4-bit base")
    logger.info("auto_fit: %s; training with %s", plan.reason, plan.best.candidate.describe())
    return apply_candidate(recipe, plan.best.candidate)


def choose(probes: Sequence[Probe], margin: float) -> tuple[Probe | None, str]:
    """The pick among the probes that fit and those within `margin` of the fastest: the recipe's own settings
    when they are among them, otherwise the one with the lowest worst-case peak; and why."""
    timed = [p for p in probes if p.status == FITS and p.s_per_step is not None]
    if not timed:
        if not any(p.status == OUT_OF_MEMORY for p in probes):
            return None, "every candidate failed before it could be measured"
        return None, "no candidate fits"
    fastest = min(timed, key=lambda p: p.s_per_step)
    near = [p for p in timed if p.s_per_step <= fastest.s_per_step * (1 + margin)]
    own = next((p for p in near if not p.candidate.overrides), None)
    if own is fastest:
        return own, "the recipe's own settings fit and were the fastest"
    if own is not None:
        return own, (f"the recipe's own settings fit and are within {margin:.0%} of the fastest "
                     f"({own.s_per_step:.2f} against {fastest.s_per_step:.2f} s/step)")
    pick = min(near, key=lambda p: (p.worst_case_peak_gib is None, p.worst_case_peak_gib or 0.0, p.s_per_step))
    if pick is fastest:
        return pick, "the fastest candidate that fits"
    return pick, (f"within {margin:.0%} of the fastest ({pick.s_per_step:.2f} against {fastest.s_per_step:.2f} "
                  f"s/step) with the least memory at the worst case")


def candidate_values(recipe: Recipe, settings: PlanSettings) -> dict[str, list[Any]]:
    """Each lever's values to try, the recipe's own first (micro_batch: ascending); a lever not named keeps the
    recipe's value. Raises RecipeError for a named lever that cannot run here."""
    model, gen = recipe.model, recipe.generation
    cuda = _on_gpu(recipe)
    named = set(settings.named_levers)
    values: dict[str, list[Any]] = {}

    def lever(name: str, own: Any, other: Any, needs: str | None = None) -> None:
        """The lever's values: the recipe's own, then the other; only the own when not named or not runnable
        (`needs` says what is missing: an error when the lever was named, a log line when it came by default)."""
        values[name] = [own]
        if name not in named or other == own:
            return
        if needs is None:
            values[name].append(other)
        elif settings.levers is None:
            logger.info("planner: not trying %s here (it needs %s)", name, needs)
        else:
            raise RecipeError(f"the {name} lever needs {needs}; leave it out of --levers")

    checkpointing = model.gradient_checkpointing
    lever("checkpointing", checkpointing, False if checkpointing else True)
    liger = bool(_training_value(recipe, "use_liger_kernel"))
    lever("liger", liger, not liger,
          None if cuda and importlib.util.find_spec("liger_kernel") else
          "a CUDA GPU and liger-kernel (pip install liger-kernel)")
    lever("merged_weights", gen.merged_weights, not gen.merged_weights,
          None if gen.engine == "hf-compiled" else "generation.engine=hf-compiled")
    optim = _current(recipe, "training.optim")
    lever("optim", optim, next((o for o in OPTIMIZERS if o != optim), optim))
    lever("load_in_4bit", model.load_in_4bit, not model.load_in_4bit,
          None if cuda and importlib.util.find_spec("bitsandbytes") else
          "a CUDA GPU and bitsandbytes (the [gpu] extra)")
    lever("unsloth", model.backend, "transformers" if model.backend == "unsloth" else "unsloth",
          "a generation.engine other than unsloth (Unsloth's vLLM needs model.backend unsloth)"
          if gen.engine == "unsloth" else None if cuda and importlib.util.find_spec("unsloth") else
          "a CUDA GPU and unsloth (README, 'On a GPU')")
    # A combination with Liger's loss or the unsloth backend is refused by the recipe's checks (that candidate only).
    lever("padding_free", model.padding_free, False if model.padding_free else "shared_prompt",
          None if model.backend == "transformers" or "unsloth" in named else
          "model.backend transformers (Unsloth scores with forwards of its own), or the unsloth lever beside it")
    values["micro_batch"] = _micro_batches(recipe, settings) if "micro_batch" in named else [_own_micro_batch(recipe)]
    if len(values["micro_batch"]) > 1 and _training_value(recipe, "loss_type") == "bnpo":
        logger.warning("planner: with training.loss_type bnpo the loss is normalised per micro-batch, so a "
                       "candidate with another micro-batch trains a slightly different loss")
    if all(len(v) == 1 for v in values.values()):
        raise RecipeError(f"the levers {', '.join(settings.named_levers)} have nothing to vary for this recipe here; "
                          f"name others with --levers ({', '.join(LEVERS)})")
    return values


def apply_candidate(recipe: Recipe, candidate: Candidate) -> Recipe:
    """The recipe with the candidate's settings, checked as any recipe is (with run.auto_fit off: a probe or
    the fitted run does not plan again)."""
    data = recipe.to_dict()
    for item in (*candidate.overrides, "run.auto_fit=false"):
        apply_override(data, item)
    fitted = recipe_from_dict(data, source=recipe.source)
    fitted.base_dir = recipe.base_dir
    check_training(fitted)
    return fitted


# ----------------------------------------------------------------------------- one probe


def probe_candidate(recipe: Recipe, settings: PlanSettings) -> dict[str, Any]:
    """Run one candidate in this process: the worst-case preflight under the cap, then, if it fits, the timed
    steps. Returns {"status", "worst_case_peak_gib", "cap_gib", "s_per_step", "questions_per_s",
    "step_peak_allocated_gib", "step_peak_reserved_gib", "note"} (see Probe)."""
    cuda = _on_gpu(recipe)
    limit = None if settings.memory_gib is None else int(settings.memory_gib * 2**30)
    worst: dict[str, Any] = {}

    def preflight(recipe: Recipe, loaded: Any, dataset: Any, reward_funcs: list[Any]) -> dict[str, Any]:
        report = preflight_step(recipe, loaded, dataset, reward_funcs, cpu=not cuda)
        worst.update(worst_case_peak_gib=_gib(report.peak_bytes),
                     cap_gib=_gib(limit if not cuda and limit is not None else report.cap_bytes))
        if not cuda and limit is not None and report.peak_bytes is not None and report.peak_bytes > limit:
            raise _OverCap(f"the preflight's peak RSS, {_gib(report.peak_bytes):.2f} GiB, is over --mem "
                           f"{settings.memory_gib:g}")
        return worst

    try:
        result = run_bench(recipe, steps=settings.steps, warmup=settings.warmup,
                           gpu_mem=settings.memory_gib if cuda else None, measure_peaks=False, before_steps=preflight)
    except PreflightError as exc:
        return {"worst_case_peak_gib": _gib(exc.peak_bytes), "cap_gib": _gib(exc.cap_bytes), "status": OUT_OF_MEMORY,
                "note": str(exc)}
    except _OverCap as exc:
        return {**worst, "status": OUT_OF_MEMORY, "note": str(exc)}
    except BenchOutOfMemory as exc:  # a timed step ran out
        return {**worst, "status": OUT_OF_MEMORY, "note": str(exc)}
    except GrpoR1Error as exc:
        return {**worst, "status": FAILED, "note": str(exc)}
    except Exception as exc:  # out of memory while loading or building; or a lever this setup cannot run
        logger.exception("planner: the candidate failed")  # the traceback, in the probe's log
        status = OUT_OF_MEMORY if is_out_of_memory(exc) else FAILED
        return {**worst, "status": status, "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return {**worst, "status": FITS, "s_per_step": result["s_per_step"], "questions_per_s": result["questions_per_s"],
            "step_peak_allocated_gib": result["peak_allocated_gib"],
            "step_peak_reserved_gib": result["peak_reserved_gib"], "note": "; ".join(result["warnings"])}


def probe_in_subprocess(recipe: Recipe, settings: PlanSettings) -> dict[str, Any]:
    """probe_candidate in a fresh `python -m grpo_r1.plan --probe` process (its own memory; no patches or
    compiled graphs carried over); a process that dies (killed for memory) is a failed probe."""
    with tempfile.TemporaryDirectory(prefix="grpo_r1_plan_") as tmp:
        recipe_file, out = Path(tmp) / "candidate.yaml", Path(tmp) / "probe.json"
        recipe_file.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        cmd = [sys.executable, "-m", "grpo_r1.plan", str(recipe_file), "--probe", str(out),
               "--base-dir", str(recipe.base_dir or Path.cwd()), "--source", recipe.source,
               "--steps", str(settings.steps), "--warmup", str(settings.warmup)]
        if settings.memory_gib is not None:
            cmd += ["--mem", str(settings.memory_gib)]
        try:
            proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                                  timeout=settings.probe_timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": FAILED, "note": f"the probe's process ran over {settings.probe_timeout_s:g} s and was "
                                              f"stopped"}
        if out.is_file():
            return json.loads(out.read_text())
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        tail = f": {' | '.join(lines[-3:])[:600]}" if lines else ""
        if proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):  # the kernel's out-of-memory killer
            return {"status": OUT_OF_MEMORY, "note": f"the probe's process was killed (SIGKILL), most likely by the "
                                                     f"system for memory{tail}"}
        return {"status": FAILED, "note": f"the probe's process ended with status {proc.returncode}{tail}"}


# ----------------------------------------------------------------------------- internals


def _on_gpu(recipe: Recipe) -> bool:
    """Whether the recipe's run trains on a CUDA GPU here (training.use_cpu keeps it on the CPU)."""
    return torch.cuda.is_available() and not _training_value(recipe, "use_cpu")


class _OverCap(Exception):
    """The preflight's peak on a CPU is over the --mem budget."""


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**30, 3)


LEVER_KEYS = {"checkpointing": "model.gradient_checkpointing", "liger": "training.use_liger_kernel",
              "merged_weights": "generation.merged_weights", "optim": "training.optim",
              "load_in_4bit": "model.load_in_4bit", "unsloth": "model.backend", "padding_free": "model.padding_free"}


def _memory_rank(lever: str, value: Any) -> int:
    """0 for the value of a lever that holds less memory, 1 for the other."""
    if lever == "checkpointing":
        return 0 if value else 1
    if lever == "liger":
        return 0 if value else 1
    if lever == "load_in_4bit":
        return 0 if value else 1
    if lever == "padding_free":  # packed: no padding's activations
        return 0 if value else 1
    if lever == "merged_weights":
        return 1 if value else 0
    if lever == "unsloth":  # not ranked: Candidate.uses_at_least compares candidates of one backend only
        return 0
    return 0 if "8bit" in str(value) else 1  # optim: 8-bit state, or 32-bit


def _combinations(values: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the levers other than micro_batch, the recipe's own values first."""
    names = list(LEVER_KEYS)
    for combo in itertools.product(*(values[name] for name in names)):
        yield dict(zip(names, combo, strict=True))


def _own_micro_batch(recipe: Recipe) -> int:
    return int(_training_value(recipe, "per_device_train_batch_size"))


def _training_value(recipe: Recipe, name: str) -> Any:
    """A `training:` value as the run uses it: the recipe's, or TRL's GRPOConfig default."""
    if name in recipe.training:
        return recipe.training[name]
    return GRPOConfig.__dataclass_fields__[name].default


def _micro_batches(recipe: Recipe, settings: PlanSettings) -> list[int]:
    """The micro-batch sizes to try, ascending: by default 1, the recipe's, its halvings and doublings that divide
    a step's completions on this process, and the whole step; or --micro-batches, each checked to divide it."""
    per_step = _own_micro_batch(recipe) * int(_training_value(recipe, "gradient_accumulation_steps"))
    generation = _generation_per_device(recipe)
    if settings.micro_batches:
        bad = [m for m in settings.micro_batches if m < 1 or per_step % m or (generation and generation % m)]
        if bad:
            raise RecipeError(f"--micro-batches {', '.join(map(str, bad))}: a micro-batch must divide the "
                              f"{per_step} completions of an optimizer step"
                              + (f" and the {generation} of a generation round" if generation else ""))
        return sorted(set(settings.micro_batches))
    own = _own_micro_batch(recipe)
    sizes = {1, own, per_step}
    size = own
    while size % 2 == 0:
        size //= 2
        sizes.add(size)
    size = own
    while size * 2 <= per_step:
        size *= 2
        sizes.add(size)
    return sorted(m for m in sizes if per_step % m == 0 and (not generation or generation % m == 0))


def _generation_per_device(recipe: Recipe) -> int | None:
    """Completions per generation round on this process when the recipe sets generation_batch_size or
    steps_per_generation (None: TRL takes gradient_accumulation_steps, so the round follows the step)."""
    rows = _training_value(recipe, "generation_batch_size")
    if rows is not None:
        return int(rows)  # one process: the round's completions are this process's
    steps = _training_value(recipe, "steps_per_generation")
    return None if steps is None else _own_micro_batch(recipe) * int(steps)


def _candidate(recipe: Recipe, combination: dict[str, Any], micro_batch: int) -> Candidate:
    own = {key: _current(recipe, key) for key in LEVER_KEYS.values()}
    settings = {LEVER_KEYS[lever]: value for lever, value in combination.items()}
    backend, checkpointing = settings["model.backend"], settings["model.gradient_checkpointing"]
    if (backend, checkpointing) != (own["model.backend"], own["model.gradient_checkpointing"]):
        settings["model.gradient_checkpointing"] = _checkpointing_for(backend, checkpointing)
    per_step = _own_micro_batch(recipe) * int(_training_value(recipe, "gradient_accumulation_steps"))
    settings["training.per_device_train_batch_size"] = micro_batch
    settings["training.gradient_accumulation_steps"] = per_step // micro_batch
    generation = _generation_per_device(recipe)
    if generation and _training_value(recipe, "steps_per_generation") is not None:
        settings["training.steps_per_generation"] = generation // micro_batch
    own["training.per_device_train_batch_size"] = _own_micro_batch(recipe)
    own["training.gradient_accumulation_steps"] = int(_training_value(recipe, "gradient_accumulation_steps"))
    if "training.steps_per_generation" in settings:
        own["training.steps_per_generation"] = int(recipe.training["steps_per_generation"])
    overrides = tuple(f"{key}={_yaml_value(value)}" for key, value in settings.items() if value != own[key])
    memory = tuple(_memory_rank(lever, value) for lever, value in combination.items()) + (micro_batch,)
    return Candidate(tuple(settings.items()), memory, overrides, backend=settings["model.backend"])


def _checkpointing_for(backend: str, checkpointing: bool | str) -> bool | str:
    """model.gradient_checkpointing for a candidate that changes the backend or checkpointing: on means Unsloth's
    offloaded kind with its backend (what its own recipes use), plain checkpointing with transformers'."""
    if not checkpointing:
        return False
    return "unsloth" if backend == "unsloth" else True


def _current(recipe: Recipe, key: str) -> Any:
    section, name = key.split(".", 1)
    if section == "training":
        value = _training_value(recipe, name)
        return str(value.value if hasattr(value, "value") else value) if name == "optim" else value
    return getattr(getattr(recipe, section), name)


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _probe_from(candidate: Candidate, result: dict[str, Any]) -> Probe:
    names = {f.name for f in fields(Probe)} - {"candidate", "status"}
    figures = {name: result[name] for name in names if name in result}
    return Probe(candidate, result["status"], **figures)
