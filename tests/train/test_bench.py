"""`python -m grpo_r1.bench` on the CPU: every figure is reported (its speed is not checked)."""

import json
import os
import subprocess
import sys

import pytest

from grpo_r1.benchmark import PHASES
from tests.helpers import CPU_RECIPE, ROOT

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
