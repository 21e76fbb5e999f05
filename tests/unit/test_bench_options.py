"""The benchmark's variants, options and table, without running it (the run: tests/train/test_bench.py)."""

from __future__ import annotations

from grpo_r1.benchmark import PHASES, SHAPE_KEYS, format_results, variant_recipe
from grpo_r1.recipe import TRAINING_DEFAULTS, load_recipe
from tests.helpers import CPU_RECIPE, ROOT


def test_variants_keep_the_shape_and_drop_the_tuning():
    recipe = load_recipe(ROOT / "recipes" / "qwen3b_gsm8k.yaml")
    trl = variant_recipe(recipe, "trl")
    assert (trl.model.backend, trl.generation.engine) == ("transformers", "hf")
    assert (trl.lora == recipe.lora and trl.generation.num_generations == 6
            and trl.generation.max_completion_length == 200)
    shape = {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1, "learning_rate": 5e-6, "beta": 0.04}
    assert {key: trl.training[key] for key in SHAPE_KEYS if key in trl.training} == shape
    assert set(trl.training) <= {*SHAPE_KEYS, *TRAINING_DEFAULTS}  # the recipe's optimizer and the rest: TRL's
    unsloth = variant_recipe(recipe, "unsloth")
    assert ((unsloth.model.backend, unsloth.generation.engine, unsloth.model.gradient_checkpointing)
            == ("unsloth", "hf", "unsloth"))


def test_bad_options_are_one_line_errors(capsys):
    from grpo_r1.bench import main

    assert main([str(CPU_RECIPE), "--compare", "vllm"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --compare takes trl, unsloth")
    assert main([str(CPU_RECIPE), "--gpu-mem", "24", "--steps", "1"]) == 2
    assert "--gpu-mem" in capsys.readouterr().err


def test_table_shows_the_speed_up_over_each_variant():
    base = {"variant": "grpo_r1", "s_per_step": 2.0, "questions_per_s": 0.5, "completion_tokens_per_s": 600.0,
            "peak_allocated_gib": 8.4, "peak_reserved_gib": 10.0, "phases_s": dict.fromkeys(PHASES, 0.1),
            "model": "qwen2.5-3b", "init": "random", "prompts_per_step": 1, "num_generations": 6,
            "max_completion_length": 200, "lora_r": 64, "beta": 0.04, "steps": 5, "warmup": 2, "device": "H100",
            "gpu_mem_cap_gib": 24}
    table = format_results([base, {**base, "variant": "trl", "s_per_step": 16.0}])
    assert "8.00x" in table and "capped at 24 GiB" in table
