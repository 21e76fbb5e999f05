"""The reference forward of a fresh adapter runs on the base model, without TRL's frozen "ref" copy of the
adapter: the same reference logprobs on a real GRPOTrainer, fewer parameters; a trained adapter keeps its copy."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from grpo_r1.prompts import tokenize_prompts
from grpo_r1.trainer import trl_private
from tests.helpers import chat, smollm2_folder, tiny_grpo_trainer

ANSWER = " 7 plus 5 is 12, so the answer is 12."


def _fixed_rollout(tokenizer):
    """Every prompt answered with the same completion, so two trainers score the same tokens."""
    completion = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]

    def rollout(prompts, trainer):
        ids = tokenize_prompts(tokenizer, prompts)
        return {"prompt_ids": ids, "completion_ids": [list(completion) for _ in prompts],
                "logprobs": [[0.0] * len(completion) for _ in prompts]}

    return rollout


def _reference_logprobs(trainer) -> torch.Tensor:
    rows = [{"prompt": chat("What is 7 plus 5?")}] * 4
    trl_private.prepare_for_step(trainer)
    return trl_private.generate_batch(trainer, rows)["ref_per_token_logps"]


def test_a_fresh_adapters_reference_is_the_base_model_without_the_copy(tmp_path):
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kept = tiny_grpo_trainer(folder, tokenizer, _fixed_rollout(tokenizer), output_dir=str(tmp_path / "a"))
    assert "ref" in kept.model.peft_config  # TRL's own behaviour with a PeftModel and beta > 0
    dropped = tiny_grpo_trainer(folder, tokenizer, _fixed_rollout(tokenizer), output_dir=str(tmp_path / "b"))
    assert trl_private.drop_fresh_reference_adapter(dropped)
    assert "ref" not in dropped.model.peft_config
    assert dropped.model.active_adapter == "default"
    assert sum(p.numel() for p in dropped.model.parameters()) < sum(p.numel() for p in kept.model.parameters())
    with_copy, without = _reference_logprobs(kept), _reference_logprobs(dropped)
    assert with_copy.shape == without.shape
    assert torch.equal(with_copy, without)  # a zero lora_B adds exactly nothing


def test_a_trained_adapter_keeps_its_reference_copy(tmp_path):
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trainer = tiny_grpo_trainer(folder, tokenizer, _fixed_rollout(tokenizer), output_dir=str(tmp_path))
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if ".lora_B.default." in name:
                param.normal_(std=0.01)  # as a cold start leaves it
    assert not trl_private.drop_fresh_reference_adapter(trainer)
    assert "ref" in trainer.model.peft_config
