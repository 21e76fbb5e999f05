"""model.padding_free (true and shared_prompt) on a real GRPOTrainer (SmolLM2-135M): a step's reference
log-probabilities, its loss and its LoRA gradients equal those of TRL's padded forwards, for completions of
different lengths."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from grpo_r1.prompts import tokenize_prompts
from grpo_r1.trainer import trl_private
from tests.helpers import chat, smollm2_folder, tiny_grpo_trainer

ANSWERS = [" 12.", " 7 plus 5 is 12, so the answer is 12.", " Blue.", " Red, as a rose is red, or so they say."]


def _rollout(tokenizer):
    """Each prompt's completions of different lengths, the same in every trainer, so padding differs per row."""
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]

    def rollout(prompts, trainer):
        ids = tokenize_prompts(tokenizer, prompts)
        completions = [list(answers[i % len(answers)]) for i in range(len(prompts))]
        return {"prompt_ids": ids, "completion_ids": completions, "logprobs": [[0.0] * len(c) for c in completions]}

    return rollout


def _step(trainer):
    """One micro-step's scoring batch, its loss, the LoRA gradients, and the shapes of the inputs the model saw."""
    rows = [{"prompt": chat("What is 7 plus 5?")}] * 2 + [{"prompt": chat("Name a colour, any colour you like.")}] * 2
    seen = []
    hook = trainer.model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    trl_private.prepare_for_step(trainer)
    torch.manual_seed(0)
    batch = trl_private.generate_batch(trainer, rows)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return batch, loss.detach(), grads, seen


@pytest.mark.parametrize("share_prompts", [False, True])
def test_packed_scoring_gives_the_padded_steps_logprobs_loss_and_gradients(tmp_path, share_prompts):
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    padded = tiny_grpo_trainer(folder, tokenizer, _rollout(tokenizer), output_dir=str(tmp_path / "padded"))
    packed = tiny_grpo_trainer(folder, tokenizer, _rollout(tokenizer), output_dir=str(tmp_path / "packed"))
    for trainer in (padded, packed):  # a trained adapter, so the reference and the policy differ
        with torch.no_grad():
            torch.manual_seed(5)
            for name, param in trainer.model.named_parameters():
                if ".lora_B.default." in name:
                    param.normal_(std=0.01)
    trl_private.pack_scoring_forwards(packed, share_prompts=share_prompts)
    padded_batch, padded_loss, padded_grads, padded_shapes = _step(padded)
    packed_batch, packed_loss, packed_grads, packed_shapes = _step(packed)
    # the reference forward and the policy's: padded as 4 rows; packed as one row of the real tokens only, or
    # as one row per question (each prompt once, then its 2 completions), padded to the longer
    assert len(padded_shapes) == len(packed_shapes) == 2
    prompt_mask, completion_mask = padded_batch["prompt_mask"], padded_batch["completion_mask"]
    if share_prompts:
        questions = [int(prompt_mask[row].sum() + completion_mask[row:row + 2].sum()) for row in (0, 2)]
        assert all(shape == (2, max(questions)) for shape in packed_shapes)
    else:
        real = int(prompt_mask.sum() + completion_mask.sum())
        assert all(shape == (1, real) for shape in packed_shapes)
    assert all(rows == 4 for rows, _ in padded_shapes)
    mask = completion_mask.bool()
    assert not mask.all()  # the completions differ in length: the padded batch has padding
    assert torch.equal(mask, packed_batch["completion_mask"].bool())
    ref_padded, ref_packed = padded_batch["ref_per_token_logps"], packed_batch["ref_per_token_logps"]
    assert torch.allclose(ref_packed[mask], ref_padded[mask], atol=1e-4)
    assert padded_loss != 0 and torch.allclose(packed_loss, padded_loss, atol=1e-5, rtol=1e-3)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5, rtol=1e-3), name
