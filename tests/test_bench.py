"""`python -m grpo_r1.bench` on the CPU: every figure is reported (its speed is not checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_r1.bench import PHASES, format_results, variant_recipe
from grpo_r1.recipe import load_recipe

ROOT = Path(__file__).parent.parent
CPU_RECIPE = ROOT / "recipes" / "smollm2_gsm8k_cpu.yaml"
SHAPE = ["generation.max_completion_length=16", "generation.num_generations=2",
         "training.per_device_train_batch_size=2", "cold_start.steps=0"]
FIELDS = {"variant", "device", "s_per_step", "questions_per_s", "completion_tokens_per_s", "peak_allocated_gib",
          "peak_reserved_gib", "phases_s", "steps", "warmup", "prompts_per_step", "num_generations",
          "max_completion_length", "lora_r", "beta", "engine", "backend", "optim"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "grpo_r1.bench", str(CPU_RECIPE), *SHAPE, "generation.engine=hf-compiled",
           "--steps", "2", "--warmup", "0", "--compare", "trl,unsloth", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_bench_reports_every_field_for_grpo_r1_and_plain_trl(bench_run):
    results, stdout = bench_run
    ours, trl, unsloth = results
    for result in (ours, trl):
        assert FIELDS <= set(result), FIELDS - set(result)
        assert result["steps"] == 2 and result["s_per_step"] > 0 and result["questions_per_s"] > 0
        assert result["completion_tokens_per_s"] > 0 and result["prompts_per_step"] == 1
        assert set(result["phases_s"]) == set(PHASES)
        assert result["phases_s"]["generation"] > 0 and result["phases_s"]["forward_backward"] > 0
        assert sum(result["phases_s"].values()) == pytest.approx(result["s_per_step"], rel=0.05)
        assert result["peak_allocated_gib"] is None  # no GPU: no memory figures, not zeros
    assert (ours["engine"], trl["engine"]) == ("hf-compiled", "hf")
    assert trl["optim"] != "paged_adamw_8bit"
    assert unsloth["variant"] == "unsloth" and "CUDA GPU" in unsloth["error"]  # cannot run here, and says why
    assert "s/step" in stdout and "grpo_r1 speed-up" in stdout and "unsloth: not measured" in stdout


def test_variants_keep_the_shape_and_drop_the_tuning():
    recipe = load_recipe(ROOT / "recipes" / "qwen3b_gsm8k.yaml")
    trl = variant_recipe(recipe, "trl")
    assert (trl.model.backend, trl.generation.engine) == ("transformers", "hf")
    assert trl.lora == recipe.lora and trl.generation.num_generations == 6 and trl.generation.max_completion_length == 200
    assert trl.training == {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1, "learning_rate": 5e-6,
                            "beta": 0.04}
    unsloth = variant_recipe(recipe, "unsloth")
    assert (unsloth.model.backend, unsloth.generation.engine, unsloth.model.gradient_checkpointing) == ("unsloth", "hf", "unsloth")


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
