"""`python -m grpo_r1.evaluate` end to end on the real SmolLM2 with an adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import CPU_RECIPE


def test_cli_evaluates_adapter_and_base_on_smollm2(tmp_path):
    """A random (untrained) LoRA on SmolLM2, evaluated with its base on 4 questions, 2 samples each."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    run = tmp_path / "run"
    lora.save_pretrained(run / "adapter")

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "grpo_r1.evaluate", str(CPU_RECIPE), "generation.max_completion_length=24",
           "--adapter", str(run), "--limit", "4", "--samples", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads((run / "eval.json").read_text())
    assert list(report["metrics"]) == ["base", "adapter"]
    assert report["settings"]["questions"] == 4 and report["settings"]["split"] == "test"
    for name, metrics in report["metrics"].items():
        for key in ("accuracy", "lenient_accuracy", "strict_format_rate", "soft_format_rate", "truncation_rate",
                    "maj@2", "lenient_maj@2", "sampled_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert 0 < metrics["mean_completion_tokens"] <= 24
        records = report["records"][name]
        assert len(records) == 4 and all(len(r["sample_answers"]) == 2 for r in records)
        # The stored per-question verdicts add up to the reported accuracy.
        assert sum(r["lenient_correct"] for r in records) / 4 == metrics["lenient_accuracy"]
    base_texts = [r["completion"] for r in report["records"]["base"]]
    adapter_texts = [r["completion"] for r in report["records"]["adapter"]]
    assert base_texts != adapter_texts, "the adapter did not change what the model writes"
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "base", "adapter"]
    assert f"written to {run / 'eval.json'}" in proc.stdout
