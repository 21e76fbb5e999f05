"""`python -m grpo_r1.evaluate --engine hf-compiled` on the real SmolLM2 (float32, CPU) against the hf
path: the same greedy answers for the base model and for its adapter, and the two differ.

The adapter is a random LoRA with non-zero B, so it changes what the model writes. On a CPU the
hf-compiled engine runs its static decoder eagerly: every question in one left-padded batch
(padded to a multiple of 64 tokens), its own attention and the base model sampled with the
adapter disabled (the decoder is rebuilt for it, and again for the adapter). The arithmetic
differs from transformers' generate in float32 rounding only, far below the gap between the best
two logits at these questions, so every greedy answer is identical.
"""

from __future__ import annotations

import json

from grpo_r1 import evaluate as evaluate_module
from tests.helpers import CPU_RECIPE

QUESTIONS = 8
MAX_TOKENS = 24
SCORES = ("accuracy", "lenient_accuracy", "strict_format_rate", "soft_format_rate", "mean_completion_tokens",
          "truncation_rate")


def random_adapter_run(folder):
    """A run folder holding a random (untrained, non-zero) LoRA adapter on SmolLM2."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"))
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    lora.save_pretrained(folder / "adapter")
    return folder


def run_evaluate(capsys, run, engine: str, out, *extra: str) -> tuple[dict, str, str]:
    """`python -m grpo_r1.evaluate` in this process: (eval.json, stdout, stderr)."""
    code = evaluate_module.main([str(CPU_RECIPE), f"generation.max_completion_length={MAX_TOKENS}",
                                 "--adapter", str(run), "--limit", str(QUESTIONS), "--engine", engine,
                                 "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return json.loads(out.read_text()), captured.out, captured.err


def assert_same_greedy_answers(report: dict, reference: dict) -> None:
    """Every greedy completion, and so every score, equal to the reference's, for base and adapter."""
    for name in ("base", "adapter"):
        differ = [(i, ours["completion"], theirs["completion"])
                  for i, (ours, theirs) in enumerate(zip(report["records"][name], reference["records"][name],
                                                         strict=True))
                  if (ours["completion"], ours["num_tokens"]) != (theirs["completion"], theirs["num_tokens"])]
        assert not differ, (name, differ)
        assert {k: report["metrics"][name][k] for k in SCORES} == {k: reference["metrics"][name][k] for k in SCORES}


def test_hf_compiled_gives_the_hf_paths_greedy_answers_for_base_and_adapter(capsys, tmp_path):
    run = random_adapter_run(tmp_path / "run")
    reference, _, _ = run_evaluate(capsys, run, "hf", tmp_path / "hf.json")
    assert reference["settings"]["engine"] == "hf" and reference["settings"]["batch_size"] == 8
    base = [r["completion"] for r in reference["records"]["base"]]
    adapter = [r["completion"] for r in reference["records"]["adapter"]]
    assert base != adapter, "the adapter did not change what the model writes"

    report, out, err = run_evaluate(capsys, run, "hf-compiled", tmp_path / "compiled.json", "--samples", "2")
    assert report["settings"]["engine"] == "hf-compiled" and report["settings"]["batch_size"] == 256
    assert_same_greedy_answers(report, reference)
    for name in ("base", "adapter"):  # the sampled pass: K answers per question, rates in [0, 1]
        assert all(len(r["sample_answers"]) == 2 for r in report["records"][name])
        assert 0.0 <= report["metrics"][name]["maj@2"] <= 1.0
        assert report["seconds"][name] > 0
    # Progress on stderr, one bar per model and pass; the table on stdout.
    for label in ("base greedy", "base 2 samples", "adapter greedy", "adapter 2 samples"):
        assert f"{label}: 100%" in err, err[-2000:]
    assert "engine hf-compiled" in out and "metric" not in err
    assert next(line for line in out.splitlines() if line.startswith("metric")).split() == ["metric", "base",
                                                                                              "adapter"]
