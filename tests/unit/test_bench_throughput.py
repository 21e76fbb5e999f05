"""The bench's FLOP and byte arithmetic, its token counting, medians and warnings, on the CPU (no GRPO run)."""

from __future__ import annotations

import statistics

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_r1.benchmark import (
    PHASES,
    bench_warnings,
    format_results,
    format_steps,
    phase_split,
    step_records,
    zero_advantages,
)
from grpo_r1.throughput import (
    ModelCounts,
    TokenCounter,
    count_model,
    decode_bytes,
    forward_flops,
    measure_device_peaks,
    train_flops,
)

HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS, RANK = 64, 128, 2, 97, 4, 2, 8
HEAD_DIM = HIDDEN // HEADS


def tiny_model(lora: bool = True):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).float()
    if lora:
        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, target_modules="all-linear"))
    return model


# The seven projections of one layer as (in, out), written out by hand from the config.
PROJECTIONS = [(HIDDEN, HIDDEN), (HIDDEN, KV_HEADS * HEAD_DIM), (HIDDEN, KV_HEADS * HEAD_DIM), (HIDDEN, HIDDEN),
               (HIDDEN, INTER), (HIDDEN, INTER), (INTER, HIDDEN)]
BASE = LAYERS * sum(i * o for i, o in PROJECTIONS)
LORA = LAYERS * sum(RANK * (i + o) for i, o in PROJECTIONS)


def test_the_model_counts_are_the_matrices_written_out_by_hand():
    counts = count_model(tiny_model(), merged=False, compute_dtype=torch.float32)
    assert counts.body_params == BASE + LORA
    assert counts.trainable_params == LORA  # only the adapter has gradients
    assert counts.head_params == VOCAB * HIDDEN  # the tied head counts once, as the head
    assert counts.decode_weight_bytes == 4 * (BASE + LORA + VOCAB * HIDDEN)  # fp32, the LoRA read live
    merged = count_model(tiny_model(), merged=True, compute_dtype=torch.bfloat16)
    assert merged.decode_weight_bytes == 2 * BASE + 4 * VOCAB * HIDDEN  # merged copy in bf16: no LoRA; head as stored
    plain = count_model(tiny_model(lora=False), merged=False, compute_dtype=torch.float32)
    assert (plain.body_params, plain.trainable_params) == (BASE, BASE)  # full fine-tuning: every weight trains


def test_a_second_frozen_adapter_is_not_counted_twice():
    # TRL's GRPOTrainer, given a PeftModel and beta > 0, adds a frozen copy named "ref" for the reference forward;
    # a forward runs one adapter, so the counts are those of one (the first GPU bench counted both: 4% high).
    model = tiny_model()
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".ref." in name:
            param.requires_grad_(False)
    counts = count_model(model, merged=False, compute_dtype=torch.float32)
    assert (counts.body_params, counts.trainable_params) == (BASE + LORA, LORA)
    assert counts.decode_weight_bytes == 4 * (BASE + LORA + VOCAB * HIDDEN)


def test_flop_formulas():
    counts = ModelCounts(body_params=100, trainable_params=10, head_params=50, decode_weight_bytes=1000)
    # forward 2*100*7 + 2*50*3; input grads the same again; weight grads 2*10*7; recompute 2*100*7
    assert train_flops(counts, 7, 3, checkpointing=False) == 1400 + 300 + 1400 + 300 + 140
    assert train_flops(counts, 7, 3, checkpointing=True) == 1400 + 300 + 1400 + 300 + 140 + 1400
    assert forward_flops(counts, 7, 3) == 1400 + 300
    assert decode_bytes(counts, 200) == 200_000


def test_the_3b_figures_match_the_docs_arithmetic():
    # Qwen2.5-3B: hidden 2048, 36 layers, 16 heads of 128, 2 KV heads, MLP 11008, vocab 151936; LoRA r64 on all seven.
    projections = [(2048, 2048), (2048, 256), (2048, 256), (2048, 2048), (2048, 11008), (2048, 11008), (11008, 2048)]
    base = 36 * sum(i * o for i, o in projections)
    lora = 36 * sum(64 * (i + o) for i, o in projections)
    counts = ModelCounts(base + lora, lora, 151936 * 2048, 0)
    assert base == pytest.approx(2.77e9, rel=0.01) and lora == pytest.approx(1.20e8, rel=0.01)
    # 48 sequences of 400 padded tokens, the head on 201 positions each, with checkpointing: ~6.2 x N_body per token
    flops = train_flops(counts, 48 * 400, 48 * 201, checkpointing=True)
    assert flops == pytest.approx(3.4e14, rel=0.05)


def test_the_token_counter_counts_padded_tokens_by_phase():
    model = tiny_model()
    counter = TokenCounter(model)
    ids = torch.randint(0, VOCAB, (3, 11))
    model(input_ids=ids)  # outside any phase (e.g. TRL's own generate): not counted
    counter.phase_started("logprobs", grad=False)
    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=4)
    counter.phase_ended("logprobs", grad=False)
    counter.phase_started("logprobs", grad=True)
    model(input_ids=ids[:, :9], logits_to_keep=5)
    counter.phase_ended("logprobs", grad=True)
    counts = counter.take()
    assert counts == {"train_body": 27, "train_head": 15, "score_body": 33, "score_head": 12, "train_widths": [9]}
    assert counter.take()["train_body"] == 0  # take() starts again
    counter.close()
    counter.phase_started("logprobs", grad=True)
    model(input_ids=ids)
    assert counter.take()["train_body"] == 0  # closed: no hooks left


def test_device_peaks_on_the_cpu_are_positive_and_say_what_was_timed():
    peaks = measure_device_peaks(torch.device("cpu"), torch.bfloat16)
    assert peaks["matmul_tflops"] > 0 and peaks["copy_gb_s"] > 0
    assert peaks["matmul_dtype"] == "float32" and peaks["matmul_shape"] == "1024x1024x1024"


def timing(step_s: float, generation: float = 1.0) -> dict[str, float]:
    return {"generation_s": generation, "scoring_s": 0.5, "training_s": step_s - generation - 0.5, "step_s": step_s,
            "reward_s": 0.01, "logprobs_s": 0.4, "optimizer_s": 0.1}


def test_step_records_give_the_rates_of_each_step():
    counts = ModelCounts(body_params=10**9, trainable_params=10**7, head_params=10**8, decode_weight_bytes=2 * 10**9)
    tokens = {"train_body": 1000, "train_head": 200, "score_body": 1000, "score_head": 200, "train_widths": [250]}
    probes = [{"tokens": tokens, "compiles": 0}]
    logs = [{"loss": 0.01, "grad_norm": 0.2, "frac_reward_zero_std": 0.0, "completions/max_length": 200.0,
             "completions/mean_length": 180.0}]
    (record,) = step_records([timing(3.0)], probes, logs, counts, checkpointing=True)
    fwd_bwd_s = 3.0 - 1.5 - 0.1
    assert record["train_tflops_per_s"] == pytest.approx(train_flops(counts, 1000, 200, checkpointing=True)
                                                         / fwd_bwd_s / 1e12)
    assert record["train_model_tflops_per_s"] < record["train_tflops_per_s"]  # the recompute is left out
    assert record["scoring_tflops_per_s"] == pytest.approx(forward_flops(counts, 1000, 200) / 0.4 / 1e12)
    assert record["decode_gb_s"] == pytest.approx(2 * 10**9 * 200 / 1.0 / 1e9)
    assert (record["loss"], record["grad_norm"], record["max_completion_length"]) == (0.01, 0.2, 200.0)
    assert record["train_widths"] == [250] and record["compiles"] == 0


def test_phases_take_the_median_and_the_mean_adds_up():
    steps = [timing(3.0), timing(3.2), timing(9.0, generation=7.0)]  # one slow generation
    median, mean = phase_split(steps, statistics.median), phase_split(steps)
    assert median["generation"] == 1.0 and mean["generation"] == pytest.approx(3.0)
    assert sum(mean.values()) == pytest.approx(sum(s["step_s"] for s in steps) / 3)


def test_zero_advantages_are_detected_and_warned_about_with_the_fix():
    assert zero_advantages([{"frac_reward_zero_std": 1.0, "grad_norm": 0.0}] * 5)
    assert zero_advantages([{"grad_norm": 0.0}] * 5)  # no frac logged: the gradient says it
    assert not zero_advantages([{"frac_reward_zero_std": 1.0, "grad_norm": 0.0},
                                {"frac_reward_zero_std": 0.5, "grad_norm": 0.1}])
    result = {"zero_advantages": True, "frac_reward_zero_std_mean": 1.0, "grad_norm_median": 0.0, "steps": 3}
    warnings = bench_warnings(result, [{"compiles": 2}])
    assert any("rewards.benchmark:text_hash" in w and "did not time the path" in w for w in warnings)
    assert any("--steps 5" in w for w in warnings)
    assert any("compiled 2 time(s)" in w and "TORCH_LOGS=recompiles" in w for w in warnings)
    assert bench_warnings({**result, "zero_advantages": False, "steps": 5}, [{"compiles": 0}]) == []


def test_table_and_step_lines_show_the_rates_and_warnings():
    base = {"variant": "grpo_r1", "s_per_step": 2.0, "s_per_step_min": 1.9, "s_per_step_max": 2.6,
            "questions_per_s": 0.5, "completion_tokens_per_s": 600.0, "peak_allocated_gib": 8.4,
            "peak_reserved_gib": 10.0, "phases_s": dict.fromkeys(PHASES, 0.1), "model": "qwen2.5-3b", "init": "random",
            "prompts_per_step": 1, "num_generations": 6, "max_completion_length": 200, "lora_r": 64, "beta": 0.04,
            "steps": 5, "warmup": 2, "device": "H200", "gpu_mem_cap_gib": 24, "train_tflops_per_s": 201.0,
            "train_of_matmul": 0.25, "decode_gb_s": 1500.0, "decode_of_copy": 0.35, "loss_median": 0.002,
            "grad_norm_median": 0.05, "frac_reward_zero_std_mean": 0.0,
            "device_peaks": {"matmul_dtype": "bfloat16", "matmul_shape": "8192x8192x8192", "matmul_tflops": 790.0,
                             "copy_gb_s": 4300.0},
            "warnings": ["only 3 measured steps"],
            "per_step": [{"step": 1, **timing(2.0), "train_widths": [320], "train_tflops_per_s": 200.0,
                          "compiles": 1, "num_alloc_retries": 3, "peak_reserved_gib": 18.5, "loss": 0.0,
                          "grad_norm": 0.0}]}
    table = format_results([base])
    assert "1.90-2.60" in table and "201 (25%)" in table and "1500 (35%)" in table
    assert "790 TFLOP/s" in table and "4300 GB/s" in table and "warning: grpo_r1: only 3 measured steps" in table
    steps = format_steps(base)
    assert "width 320" in steps and "compiles 1" in steps and "alloc retries 3" in steps
