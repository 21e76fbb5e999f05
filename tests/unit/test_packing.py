"""Packed training forwards (model.padding_free) against TRL's padded ones: the same per-token log-probabilities,
entropies and LoRA gradients, on a small Qwen2 with a LoRA whose B is non-zero."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer.utils import selective_log_softmax_and_entropy

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.packing import packed_logps
from tests.helpers import CPU_RECIPE

VOCAB = 96


def _model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.train()


def _batch(prompt_lengths, completion_lengths, prompt_width=9, completion_width=7):
    """TRL's layout: prompts left-padded to prompt_width, completions right-padded to completion_width."""
    generator = torch.Generator().manual_seed(1)
    rows = len(prompt_lengths)
    ids = torch.zeros((rows, prompt_width + completion_width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        ids[row, prompt_width - p:prompt_width + c] = torch.randint(2, VOCAB, (p + c,), generator=generator)
        mask[row, prompt_width - p:prompt_width + c] = 1
    return ids, mask, completion_width


def _padded_logps(model, ids, mask, keep, temperature):
    """What TRL's full-logits path computes: one padded forward, logits of the last `keep` predicting positions."""
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
    return selective_log_softmax_and_entropy(logits, ids[:, -keep:], temperature=temperature,
                                             row_mask=mask[:, -keep:])


def test_packed_logprobs_entropies_and_lora_gradients_equal_the_padded_ones():
    model = _model()
    ids, mask, keep = _batch([9, 4, 6, 2], [7, 3, 1, 5])
    completion = mask[:, -keep:].bool()
    padded, padded_entropy = _padded_logps(model, ids, mask, keep, 0.8)
    (padded * completion).sum().backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    packed, packed_entropy = packed_logps(model, ids, mask, keep, temperature=0.8, compute_entropy=True)
    (packed * completion).sum().backward()
    assert packed.shape == padded.shape == (4, keep)
    assert torch.allclose(packed[completion], padded[completion], atol=1e-5)
    assert torch.allclose(packed_entropy[completion], padded_entropy[completion], atol=1e-5)
    assert (packed[~completion] == 0).all()  # padding: 0, as TRL's masked rows
    assert any(g.abs().sum() > 0 for g in padded_grads.values())
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, padded_grads[name], atol=1e-5), name


def test_a_row_is_not_attended_by_another():
    """Changing one row's tokens changes no other row's log-probabilities: the packed rows do not see each other."""
    model = _model().eval()
    ids, mask, keep = _batch([5, 5, 3], [4, 6, 2])
    with torch.no_grad():
        before, _ = packed_logps(model, ids, mask, keep, temperature=1.0)
        changed = ids.clone()
        changed[0][mask[0].bool()] = (changed[0][mask[0].bool()] + 7) % VOCAB
        after, _ = packed_logps(model, changed, mask, keep, temperature=1.0)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.padding_free=true", "training.use_liger_kernel=true"], "set one of them to false"),
    (["model.padding_free=true", "model.backend=unsloth"], "needs model.backend 'transformers'"),
])
def test_padding_free_with_what_replaces_the_forward_is_refused(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(CPU_RECIPE, overrides)
