"""The step timer on a real GRPOTrainer with TRL's own generation (the hf engine)."""

from __future__ import annotations

from transformers import AutoTokenizer

from grpo_r1.trainer.timing import StepTimer
from tests.helpers import smollm2_folder, tiny_grpo_trainer


def test_step_timer_with_trl_generation(tmp_path):
    """The hf engine (TRL's generate, no rollout_func) gets the same timing/* metrics."""
    smollm2_dir = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    trainer = tiny_grpo_trainer(smollm2_dir, tokenizer, None, max_steps=1, output_dir=str(tmp_path))
    StepTimer().attach(trainer)
    trainer.train()
    (log,) = [log for log in trainer.state.log_history if "loss" in log]
    assert log["timing/generation_s"] > 0 and log["timing/scoring_s"] > 0 and log["timing/training_s"] > 0
    assert "sampling/sampling_logp_difference/mean" not in log  # TRL's generate returns no logprobs
