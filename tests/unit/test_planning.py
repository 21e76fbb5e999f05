"""The planner's search (grpo_r1.planning) on real recipes: which candidates it runs in which order, what it
skips, what it picks, and its refusals. The probes here answer from a memory model of the candidate (what a
probe's process would report), so the search itself is what is tested; tests/train/test_plan.py runs real
probes."""

from __future__ import annotations

import pytest

from grpo_r1.errors import RecipeError
from grpo_r1.planning import FAILED, FITS, OUT_OF_MEMORY, SKIPPED, PlanSettings, apply_candidate, plan_recipe
from grpo_r1.recipe import load_recipe
from tests.helpers import CPU_RECIPE

# 8 questions x 6 completions a step in 4 micro-batches of 12, as the GPU bench's batched shape
BATCHED = ["generation.num_generations=6", "training.per_device_train_batch_size=12",
           "training.gradient_accumulation_steps=4", "model.gradient_checkpointing=true"]


def memory_model(limit_rows: int, seconds: dict[int, float] | None = None):
    """A probe whose candidate holds micro-batch rows with checkpointing and 1.5 times that without; it fits when
    that is at most `limit_rows` and takes `seconds[rows]` (default 10 / rows) per step."""
    seen = []

    def run_probe(recipe, settings):
        rows = recipe.training["per_device_train_batch_size"] * (1 if recipe.model.gradient_checkpointing else 1.5)
        seen.append((recipe.training["per_device_train_batch_size"], recipe.training["gradient_accumulation_steps"],
                     recipe.model.gradient_checkpointing, recipe.run.auto_fit))
        if rows > limit_rows:
            return {"status": OUT_OF_MEMORY, "worst_case_peak_gib": 24.0, "cap_gib": 24.0, "note": "too big"}
        step = (seconds or {}).get(rows, 10.0 / rows)
        return {"status": FITS, "worst_case_peak_gib": rows / 2, "cap_gib": 24.0, "s_per_step": step,
                "questions_per_s": 8 / step}

    return run_probe, seen


def test_micro_batches_grow_while_they_fit_and_a_candidate_with_more_memory_than_a_failure_is_skipped():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, seen = memory_model(limit_rows=24)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch", "checkpointing")), run_probe=run_probe)
    # checkpointing on: 12 fits, 24 fits, 48 does not; off: 12 (18 rows) fits, 24 (36 rows) does not
    assert seen == [(12, 4, True, False), (24, 2, True, False), (48, 1, True, False),
                    (12, 4, False, False), (24, 2, False, False)]
    statuses = [(p.candidate.micro_batch, p.status) for p in plan.probes]
    assert statuses == [(12, FITS), (24, FITS), (48, OUT_OF_MEMORY), (12, FITS), (24, OUT_OF_MEMORY)]
    # 24 rows with checkpointing: 10/24 s, the fastest
    assert plan.best.candidate.overrides == ("training.per_device_train_batch_size=24",
                                             "training.gradient_accumulation_steps=2")
    picked = apply_candidate(recipe, plan.best.candidate)
    assert picked.training["per_device_train_batch_size"] == 24 and picked.training["gradient_accumulation_steps"] == 2
    assert picked.run.auto_fit is False and picked.source == recipe.source and picked.base_dir == recipe.base_dir


def test_a_skipped_candidate_says_which_failure_it_would_repeat():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, seen = memory_model(limit_rows=20)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch", "checkpointing")), run_probe=run_probe)
    skipped = [p for p in plan.probes if p.status == SKIPPED]
    # on at 24 failed; off at 12 fits (18 rows); off at 24 holds at least what on at 24 did, so it is not run
    assert [(p.candidate.micro_batch, dict(p.candidate.settings)["model.gradient_checkpointing"]) for p in skipped] \
        == [(24, False)]
    assert (24, 2, False, False) not in seen and len(seen) == 3
    assert skipped[0].note == ("holds at least the memory of training.per_device_train_batch_size=24 "
                               "training.gradient_accumulation_steps=2, which did not fit")


def test_when_the_recipe_does_not_fit_the_micro_batch_shrinks_until_one_does():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, seen = memory_model(limit_rows=3)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    assert [s[0] for s in seen] == [12, 6, 3]  # the halvings of 12 that divide 48, largest first
    assert plan.best.candidate.overrides == ("training.per_device_train_batch_size=3",
                                             "training.gradient_accumulation_steps=16")


def test_the_recipes_own_settings_stay_when_they_are_within_the_margin_of_the_fastest():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, _ = memory_model(limit_rows=48, seconds={12: 3.0, 24: 2.9, 48: 2.0})
    close = plan_recipe(recipe, PlanSettings(levers=("micro_batch",), micro_batches=(12, 24)), run_probe=run_probe)
    assert close.best.candidate.overrides == () and "within 5%" in close.reason
    far = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    assert far.best.candidate.micro_batch == 48 and far.reason == "the fastest candidate that fits"


def test_of_the_candidates_within_the_margin_of_the_fastest_the_one_with_the_least_memory_is_picked():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, _ = memory_model(limit_rows=48, seconds={12: 3.0, 24: 2.04, 48: 2.0})
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    assert plan.best.candidate.micro_batch == 24  # 2% slower than 48, at half its worst-case peak
    assert plan.reason == "within 5% of the fastest (2.04 against 2.00 s/step) with the least memory at the worst case"
    exact = plan_recipe(recipe, PlanSettings(levers=("micro_batch",), margin=0.0), run_probe=run_probe)
    assert exact.best.candidate.micro_batch == 48


def test_nothing_fits_gives_no_pick():
    recipe = load_recipe(CPU_RECIPE, BATCHED)
    run_probe, seen = memory_model(limit_rows=0)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    assert plan.best is None and plan.reason == "no candidate fits"
    assert [s[0] for s in seen] == [12, 6, 3, 1]


def test_steps_per_generation_follows_the_micro_batch_so_the_round_keeps_its_completions():
    recipe = load_recipe(CPU_RECIPE, [*BATCHED, "training.steps_per_generation=8"])  # 96 per round
    run_probe, _ = memory_model(limit_rows=24)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    for probe in plan.probes:
        settings = dict(probe.candidate.settings)
        assert settings["training.per_device_train_batch_size"] * settings["training.steps_per_generation"] == 96
        assert settings["training.per_device_train_batch_size"] * settings["training.gradient_accumulation_steps"] \
            == 48


def test_an_eight_bit_optimizer_holds_less_than_a_32_bit_one_so_it_is_still_tried_after_that_fails():
    recipe = load_recipe(CPU_RECIPE, [*BATCHED, "training.optim=adamw_torch"])

    def run_probe(recipe, settings):
        optim = str(recipe.training["optim"])
        return ({"status": FITS, "s_per_step": 1.0, "worst_case_peak_gib": 20.0} if "8bit" in optim
                else {"status": OUT_OF_MEMORY, "note": "32-bit moments"})

    plan = plan_recipe(recipe, PlanSettings(levers=("optim",)), run_probe=run_probe)
    assert [(dict(p.candidate.settings)["training.optim"], p.status) for p in plan.probes] == [
        ("adamw_torch", OUT_OF_MEMORY), ("paged_adamw_8bit", FITS)]
    assert plan.best.candidate.overrides == ("training.optim=paged_adamw_8bit",)


def test_micro_batches_divide_a_set_generation_batch_size_and_a_refused_candidate_is_one_failed_probe():
    recipe = load_recipe(CPU_RECIPE, ["generation.num_generations=6", "training.per_device_train_batch_size=8",
                                      "training.gradient_accumulation_steps=4", "training.generation_batch_size=24"])
    run_probe, seen = memory_model(limit_rows=48)
    plan = plan_recipe(recipe, PlanSettings(levers=("micro_batch",)), run_probe=run_probe)
    # a step takes 32 completions and a round 24: only the sizes dividing both are tried (8 is the recipe's)
    assert [s[0] for s in seen] == [8]
    assert [p.candidate.micro_batch for p in plan.probes] == [8]

    def refusing(recipe, settings):
        raise RecipeError("training.per_device_train_batch_size: refused for this test")

    failed = plan_recipe(recipe, PlanSettings(levers=("micro_batch",), micro_batches=(4, 8)), run_probe=refusing)
    assert [p.status for p in failed.probes] == [FAILED]  # 8 failed: no larger one tried, no smaller one either
    assert failed.best is None and failed.reason == "every candidate failed before it could be measured"
    assert "refused for this test" in failed.probes[0].note


def test_the_unsloth_lever_swaps_the_backend_and_its_kind_of_checkpointing(monkeypatch):
    """Named, the unsloth lever tries Unsloth's model for training: with checkpointing on, its offloaded kind (the
    only one model.gradient_checkpointing=unsloth names); the recipe's own candidate keeps its own settings."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "unsloth" else None)
    recipe = load_recipe(CPU_RECIPE, [*BATCHED, "generation.engine=hf-compiled", "training.use_cpu=false"])
    run_probe, seen = memory_model(limit_rows=48)
    probed = []

    def recording(candidate_recipe, settings):
        probed.append((candidate_recipe.model.backend, candidate_recipe.model.gradient_checkpointing))
        return run_probe(candidate_recipe, settings)

    plan = plan_recipe(recipe, PlanSettings(levers=("unsloth", "checkpointing")), run_probe=recording)
    assert probed == [("transformers", True), ("unsloth", "unsloth"), ("transformers", False), ("unsloth", False)]
    assert [p.candidate.overrides for p in plan.probes] == [
        (), ("model.gradient_checkpointing=unsloth", "model.backend=unsloth"),
        ("model.gradient_checkpointing=false",), ("model.gradient_checkpointing=false", "model.backend=unsloth")]
    back = load_recipe(CPU_RECIPE, [*BATCHED, "generation.engine=hf-compiled", "training.use_cpu=false",
                                    "model.backend=unsloth", "model.gradient_checkpointing=unsloth"])
    probed.clear()
    plan_recipe(back, PlanSettings(levers=("unsloth",)), run_probe=recording)
    assert probed == [("unsloth", "unsloth"), ("transformers", True)]

    def unsloth_runs_out(candidate_recipe, settings):  # no memory order across backends: nothing is skipped
        if candidate_recipe.model.backend == "unsloth":
            return {"status": OUT_OF_MEMORY, "worst_case_peak_gib": 24.0, "cap_gib": 24.0, "note": "too big"}
        return run_probe(candidate_recipe, settings)

    crossed = plan_recipe(back, PlanSettings(levers=("unsloth", "checkpointing")), run_probe=unsloth_runs_out)
    assert [p.status for p in crossed.probes] == [OUT_OF_MEMORY, FITS, SKIPPED, FITS]
    # unsloth without checkpointing holds more than unsloth with it, which failed: skipped; transformers' both run
    assert crossed.best.candidate.overrides == ("model.gradient_checkpointing=false", "model.backend=transformers")
    with pytest.raises(RecipeError, match="a generation.engine other than unsloth"):
        plan_recipe(load_recipe(CPU_RECIPE, ["model.backend=unsloth", "generation.engine=unsloth"]),
                    PlanSettings(levers=("unsloth",)), run_probe=recording)


def test_the_padding_free_lever_tries_the_shared_prompt_where_the_recipe_checks_allow_it(monkeypatch):
    """Named, the padding_free lever tries model.padding_free=shared_prompt beside the recipe's own; with Liger's
    loss (which replaces the forward it packs) the recipe's check refuses the combination, and no probe runs it."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "liger_kernel" else None)
    recipe = load_recipe(CPU_RECIPE, [*BATCHED, "training.use_cpu=false"])
    run_probe, seen = memory_model(limit_rows=48)
    probed = []

    def recording(candidate_recipe, settings):
        probed.append((candidate_recipe.model.padding_free, candidate_recipe.training.get("use_liger_kernel", False)))
        return run_probe(candidate_recipe, settings)

    plan = plan_recipe(recipe, PlanSettings(levers=("padding_free", "liger")), run_probe=recording)
    assert probed == [(False, False), ("shared_prompt", False), (False, True)]
    assert [(p.candidate.overrides, p.status) for p in plan.probes] == [
        ((), FITS), (("model.padding_free=shared_prompt",), FITS), (("training.use_liger_kernel=true",), FITS),
        (("training.use_liger_kernel=true", "model.padding_free=shared_prompt"), FAILED)]
    assert "set one of them to false" in plan.probes[-1].note
    packed = load_recipe(CPU_RECIPE, [*BATCHED, "model.padding_free=true"])
    probed.clear()
    plan_recipe(packed, PlanSettings(levers=("padding_free",)), run_probe=recording)
    assert probed == [(True, False), (False, False)]  # the recipe's own first, then off


@pytest.mark.parametrize(("settings", "overrides", "message"), [
    (dict(levers=("speed",)), [], "unknown lever 'speed'"),
    (dict(levers=()), [], "name at least one lever"),
    (dict(steps=0), [], "at least 1 step"),
    (dict(memory_gib=0), [], "--mem is the memory"),
    (dict(levers=("micro_batch",), micro_batches=(5,)), BATCHED, "must divide the 48 completions"),
    (dict(levers=("liger",)), [], "the liger lever needs a CUDA GPU and liger-kernel"),
    (dict(levers=("load_in_4bit",)), [], "needs a CUDA GPU and bitsandbytes"),
    (dict(levers=("unsloth",)), [], "the unsloth lever needs a CUDA GPU and unsloth"),
    (dict(levers=("merged_weights",)), ["generation.engine=hf"], "needs generation.engine=hf-compiled"),
    (dict(levers=("padding_free",)), ["model.backend=unsloth"], "padding_free lever needs model.backend transformers"),
])
def test_bad_plans_are_refused_with_the_fix(settings, overrides, message, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the liger and 4-bit levers need a GPU
    recipe = load_recipe(CPU_RECIPE, overrides)
    run_probe, seen = memory_model(limit_rows=48)
    with pytest.raises(RecipeError, match=message):
        plan_recipe(recipe, PlanSettings(**settings), run_probe=run_probe)
    assert seen == []  # refused before any probe
