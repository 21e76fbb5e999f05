"""`python -m grpo_r1.bench` on the CPU: every figure is reported (its speed is not checked), and a reward
that varies gives non-zero advantages, loss and gradients (the real path is timed)."""

import json
import os
import subprocess
import sys

import pytest

from grpo_r1.benchmark import PHASES
from tests.helpers import CPU_RECIPE, ROOT

SHAPE = ["generation.max_completion_length=16", "generation.num_generations=2",
         "training.per_device_train_batch_size=2", "cold_start.steps=0",
         'rewards=[graded_format, "rewards.benchmark:text_hash"]']
FIELDS = {"variant", "device", "s_per_step", "questions_per_s", "completion_tokens_per_s", "peak_allocated_gib",
          "peak_reserved_gib", "phases_s", "steps", "warmup", "prompts_per_step", "num_generations",
          "max_completion_length", "lora_r", "beta", "engine", "backend", "optim", "s_per_step_min", "s_per_step_max",
          "s_per_step_mean", "phases_s_mean", "device_peaks", "train_tflops_per_s", "train_of_matmul", "decode_gb_s",
          "decode_of_copy", "loss_median", "grad_norm_median", "zero_advantages", "warnings", "per_step"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "grpo_r1.bench", str(CPU_RECIPE), *SHAPE, "generation.engine=hf-compiled",
           "--steps", "2", "--warmup", "0", "--compare", "trl,unsloth", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_bench_reports_every_field_for_grpo_r1_and_plain_trl(bench_run):
    results, stdout = bench_run
    ours, trl, unsloth = results
    for result in (ours, trl):
        assert FIELDS <= set(result), FIELDS - set(result)
        assert result["steps"] == 2 and result["s_per_step"] > 0 and result["questions_per_s"] > 0
        assert result["completion_tokens_per_s"] > 0 and result["prompts_per_step"] == 1
        assert set(result["phases_s"]) == set(PHASES)
        assert result["phases_s"]["generation"] > 0 and result["phases_s"]["forward_backward"] > 0
        assert sum(result["phases_s_mean"].values()) == pytest.approx(result["s_per_step_mean"], rel=0.05)
        assert result["s_per_step_min"] <= result["s_per_step"] <= result["s_per_step_max"]
        assert result["peak_allocated_gib"] is None  # no GPU: no memory figures, not zeros
        assert len(result["per_step"]) == result["steps"] + result["warmup"]
        # the hash reward varies, so the advantages, the loss's gradient and the rates are real
        assert not result["zero_advantages"] and result["grad_norm_median"] > 0
        assert all(step["train_tokens"] > 0 and "loss" in step for step in result["per_step"])
        assert result["train_tflops_per_s"] > 0 and 0 < result["train_of_matmul"]
        assert result["device_peaks"]["matmul_tflops"] > 0 and result["device_peaks"]["copy_gb_s"] > 0
        assert any("--steps 5" in warning for warning in result["warnings"])  # 2 steps: too few for a median
    assert (ours["engine"], trl["engine"]) == ("hf-compiled", "hf")
    assert trl["optim"] != "paged_adamw_8bit"
    assert unsloth["variant"] == "unsloth" and "CUDA GPU" in unsloth["error"]  # cannot run here, and says why
    assert ours["decode_gb_s"] > 0  # our decoder's weight bytes over its time
    assert "s/step (median)" in stdout and "grpo_r1 speed-up" in stdout and "unsloth: not measured" in stdout
    assert "fwd+bwd TFLOP/s" in stdout and "step  1:" in stdout and "warning: grpo_r1: only 2 measured steps" in stdout
