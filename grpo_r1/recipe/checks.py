"""Checks on a recipe's values that span keys and sections, run once when it is built."""

from __future__ import annotations

import dataclasses
import difflib
import re

from grpo_r1.errors import RecipeError
from grpo_r1.recipe.sections import GUARD_NAMES, REPORTERS, Recipe
from rewards import BUILTIN_REWARDS
from rewards.layout import layout_from

_PROMPT_TAG = re.compile(r"</?([A-Za-z][\w.-]*)>")


def check_recipe(recipe: Recipe, source: str) -> None:
    """The checks on values and across sections (`training:` aside); each names the keys to change."""
    gen, model = recipe.generation, recipe.model
    if gen.engine == "unsloth" and model.backend != "unsloth":
        raise RecipeError(f"{source}: generation.engine 'unsloth' needs model.backend 'unsloth' "
                          "(Unsloth's fast_inference shares the model's weights)")
    if model.gradient_checkpointing == "unsloth" and model.backend != "unsloth":
        raise RecipeError(f"{source}: model.gradient_checkpointing 'unsloth' needs model.backend 'unsloth'; "
                          "use true for the transformers backend")
    if model.padding_free and model.backend != "transformers":
        raise RecipeError(f"{source}: model.padding_free needs model.backend 'transformers' (Unsloth replaces "
                          "the trainer's scoring forwards with its own); set model.padding_free=false")
    if model.padding_free and recipe.training.get("use_liger_kernel"):
        raise RecipeError(f"{source}: model.padding_free packs TRL's full-logits forward, which "
                          "training.use_liger_kernel replaces with Liger's chunked loss; set one of them to false")
    positive = {
        "generation.num_generations": gen.num_generations,
        "generation.max_completion_length": gen.max_completion_length,
        "model.max_seq_length": model.max_seq_length,
        "lora.r": recipe.lora.r,
        "data.arithmetic_examples": recipe.data.arithmetic_examples,
        "data.arithmetic_max_ops": recipe.data.arithmetic_max_ops,
        "data.arithmetic_min_ops": recipe.data.arithmetic_min_ops,
        "logging.logging_steps": recipe.logging.logging_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise RecipeError(f"{source}: {key!r} must be at least 1, got {value}")
    if recipe.data.arithmetic_min_ops > recipe.data.arithmetic_max_ops:
        raise RecipeError(f"{source}: 'data.arithmetic_min_ops' ({recipe.data.arithmetic_min_ops}) is above "
                          f"'data.arithmetic_max_ops' ({recipe.data.arithmetic_max_ops}); lower one or raise the other")
    if gen.resample_equal_groups < 0:
        raise RecipeError(f"{source}: 'generation.resample_equal_groups' is a number of extra generation rounds per "
                          f"step, 0 (off) or more, got {gen.resample_equal_groups}")
    if recipe.data.arithmetic_distractors < 0:
        raise RecipeError(f"{source}: 'data.arithmetic_distractors' is a number of sentences, 0 or more, "
                          f"got {recipe.data.arithmetic_distractors}")
    if gen.num_generations < 2:
        raise RecipeError(f"{source}: 'generation.num_generations' must be at least 2: "
                          "GRPO compares completions within a group")
    if not gen.temperature > 0:
        raise RecipeError(f"{source}: 'generation.temperature' must be above 0, got {gen.temperature}: GRPO samples "
                          "several different completions per question and compares them (0 would make them all "
                          "the same greedy one); use e.g. 0.7 or 1.0")
    if not 0.0 < gen.top_p <= 1.0:
        raise RecipeError(f"{source}: 'generation.top_p' is a fraction in (0, 1], got {gen.top_p}")
    if not 0.0 < gen.gpu_memory_utilization <= 1.0:
        raise RecipeError(f"{source}: 'generation.gpu_memory_utilization' is a fraction in (0, 1], "
                          f"got {gen.gpu_memory_utilization}")
    if gen.merged_weights and gen.engine != "hf-compiled":
        raise RecipeError(f"{source}: 'generation.merged_weights' applies to generation.engine 'hf-compiled' only "
                          f"(the engine is {gen.engine!r}); remove it or switch the engine")
    if not 0.0 <= recipe.lora.dropout < 1.0:
        raise RecipeError(f"{source}: 'lora.dropout' is a probability in [0, 1), got {recipe.lora.dropout}")
    check_report_to(recipe, source)
    if recipe.logging.completions_every < 0:
        raise RecipeError(f"{source}: 'logging.completions_every' must be 0 (off) or a number of steps, "
                          f"got {recipe.logging.completions_every}")
    guards = recipe.guards
    for key in GUARD_NAMES:
        if getattr(guards, key) is False:
            setattr(guards, key, "off")
    if guards.patience < 1:
        raise RecipeError(f"{source}: 'guards.patience' is a number of steps, at least 1, got {guards.patience}")
    for key in ("equal_rewards_fraction", "truncation_fraction"):
        if not 0.0 < getattr(guards, key) <= 1.0:
            raise RecipeError(f"{source}: 'guards.{key}' is a fraction in (0, 1], got {getattr(guards, key)}")
    if not guards.logprob_gap_max > 0:
        raise RecipeError(f"{source}: 'guards.logprob_gap_max' is a logprob difference per token, above 0, "
                          f"got {guards.logprob_gap_max}")
    if model.init == "random":
        if not model.architecture or not model.tokenizer:
            raise RecipeError(f"{source}: model.init 'random' needs model.architecture (e.g. qwen2.5-3b) and "
                              f"model.tokenizer (a tokenizer folder of that model family)")
    elif model.architecture:
        raise RecipeError(f"{source}: model.architecture is only read with model.init: random; "
                          "remove it or set model.init=random")
    cold = recipe.cold_start
    if (cold.steps < 0 or cold.batch_size < 1 or cold.learning_rate <= 0
            or (cold.examples is not None and cold.examples < 1)):
        raise RecipeError(f"{source}: 'cold_start' needs steps >= 0 (0: off), batch_size >= 1, learning_rate > 0 and "
                          f"examples >= 1 or null; got {dataclasses.asdict(cold)}")
    if recipe.data.limit is not None and recipe.data.limit < 1:
        raise RecipeError(f"{source}: 'data.limit' must be at least 1 (or null for every row), got {recipe.data.limit}")
    if not recipe.rewards:
        raise RecipeError(f"{source}: 'rewards' is empty; name at least one reward function (e.g. - correctness)")
    for index, spec in enumerate(recipe.rewards):
        if not 0 <= spec.timeout_s < float("inf"):
            raise RecipeError(f"{source}: 'rewards.{index}.timeout_s' ({spec.name}) is the seconds one call may take, "
                              f"a number >= 0 (0: no limit), got {spec.timeout_s}")
    check_layout(recipe, source)


def check_report_to(recipe: Recipe, source: str) -> None:
    """logging.report_to names known trackers, each once, and "none" only alone. (Whether their packages are
    installed is a check on the machine: grpo_r1.run.tracking.check_reporters, before the model loads.)"""
    names = recipe.logging.report_to
    accepted = [*REPORTERS, "none"]
    if not names:
        raise RecipeError(f"{source}: 'logging.report_to' is an empty list; write none to report to no tracker")
    for name in names:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{source}: 'logging.report_to' names an unknown tracker {name!r}{hint} "
                              f"(accepted: {', '.join(accepted)})")
    if "none" in names and len(names) > 1:
        others = ", ".join(repr(n) for n in names if n != "none")
        raise RecipeError(f"{source}: 'logging.report_to' names 'none' together with {others}; 'none' means no "
                          "tracker: drop it, or write it alone")
    recipe.logging.report_to = list(dict.fromkeys(names))  # each tracker once


def check_layout(recipe: Recipe, source: str) -> None:
    """The built-in rewards' `tags` are valid and agree, and a system prompt that names tags names theirs."""
    layouts = {}
    for index, spec in enumerate(recipe.rewards):
        if spec.name in BUILTIN_REWARDS:
            try:
                layouts[index] = layout_from(spec.kwargs.get("tags"))
            except ValueError as exc:
                raise RecipeError(f"{source}: rewards[{index}] ({spec.name}): {exc}") from None
    if len(set(layouts.values())) > 1:
        described = "; ".join(f"rewards[{i}] ({recipe.rewards[i].name}) {' '.join(layout.tags[::2])}"
                              for i, layout in layouts.items())
        raise RecipeError(f"{source}: the built-in rewards score different tags ({described}); give every one the "
                          "same kwargs: {tags: {...}}, since a completion can follow only one layout")
    layout = recipe.layout
    prompt = recipe.data.system_prompt
    named = set(_PROMPT_TAG.findall(prompt))
    if named and not {layout.reasoning, layout.answer} <= named:
        asked = " ".join(f"<{name}>" for name in sorted(named))
        wanted = layout.system_prompt().replace("\n", "\\n")
        raise RecipeError(f"{source}: data.system_prompt asks for {asked}, but the rewards score "
                          f"{layout.reasoning_open} and {layout.answer_open}; make it ask for the rewards' tags, "
                          f'e.g. data.system_prompt: "{wanted}"')
