"""Packed training forwards (model.padding_free, true and shared_prompt) against TRL's padded ones: the same
per-token log-probabilities, entropies and LoRA gradients, on a small Qwen2 with a LoRA whose B is non-zero."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer.utils import selective_log_softmax_and_entropy

from grpo_r1.errors import ModelError, RecipeError
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.packing import (
    FLEX_PACKED,
    flex_attention_problem,
    packed_logps,
    switch_to_flex_attention,
    use_flex_attention,
)
from tests.helpers import CPU_RECIPE

VOCAB = 96


def _model(attention="sdpa", head_dim=16):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation=attention)
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.train()


def _batch(prompt_lengths, completion_lengths, prompt_width=9, completion_width=7, groups=None):
    """TRL's layout: prompts left-padded to prompt_width, completions right-padded to completion_width.
    `groups`: per row, which prompt it has (rows with the same one get the same prompt tokens); default all
    different."""
    generator = torch.Generator().manual_seed(1)
    rows = len(prompt_lengths)
    groups = groups or list(range(rows))
    prompts = {g: torch.randint(2, VOCAB, (p,), generator=generator) for g, p in zip(groups, prompt_lengths)}
    ids = torch.zeros((rows, prompt_width + completion_width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        ids[row, prompt_width - p:prompt_width] = prompts[groups[row]]
        ids[row, prompt_width:prompt_width + c] = torch.randint(2, VOCAB, (c,), generator=generator)
        mask[row, prompt_width - p:prompt_width + c] = 1
    return ids, mask, completion_width


def _padded_logps(model, ids, mask, keep, temperature):
    """What TRL's full-logits path computes: one padded forward, logits of the last `keep` predicting positions."""
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
    return selective_log_softmax_and_entropy(logits, ids[:, -keep:], temperature=temperature,
                                             row_mask=mask[:, -keep:])


# (prompt lengths, completion lengths, which prompt each row has): rows of one question, of several questions
# (the last alone), and of one question whose completions are cut short unevenly.
SHARED = [([9, 9, 9, 4, 4, 6], [7, 3, 1, 5, 7, 2], [0, 0, 0, 1, 1, 2]),
          ([5, 5, 5, 5], [1, 7, 4, 2], [0, 0, 0, 0])]


@pytest.mark.parametrize(("share_prompts", "attention", "batch"), [
    (False, "sdpa", ([9, 4, 6, 2], [7, 3, 1, 5], None)),
    *[(True, "sdpa", batch) for batch in SHARED],
    (True, "eager", SHARED[0]),
])
def test_packed_logprobs_entropies_and_lora_gradients_equal_the_padded_ones(share_prompts, attention, batch):
    model = _model(attention)
    prompts, completions, groups = batch
    ids, mask, keep = _batch(prompts, completions, groups=groups)
    completion = mask[:, -keep:].bool()
    padded, padded_entropy = _padded_logps(model, ids, mask, keep, 0.8)
    (padded * completion).sum().backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    packed, packed_entropy = packed_logps(model, ids, mask, keep, temperature=0.8, compute_entropy=True,
                                          share_prompts=share_prompts, attention=attention)
    (packed * completion).sum().backward()
    assert packed.shape == padded.shape == (len(prompts), keep)
    assert torch.allclose(packed[completion], padded[completion], atol=1e-5)
    assert torch.allclose(packed_entropy[completion], padded_entropy[completion], atol=1e-5)
    assert (packed[~completion] == 0).all()  # padding: 0, as TRL's masked rows
    assert any(g.abs().sum() > 0 for g in padded_grads.values())
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, padded_grads[name], atol=1e-5), name


@pytest.mark.parametrize("takes_logits_to_keep", [True, False])
def test_each_prompt_goes_through_the_model_once(takes_logits_to_keep):
    """shared_prompt: one sequence per question, its prompt once and then each completion, nothing else."""
    model = _model().eval()
    prompts, completions, groups = SHARED[0]
    ids, mask, keep = _batch(prompts, completions, groups=groups)
    seen = []
    hook = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    with torch.no_grad():
        shared, _ = packed_logps(model, ids, mask, keep, temperature=1.0, share_prompts=True,
                                 takes_logits_to_keep=takes_logits_to_keep)
        rows, _ = packed_logps(model, ids, mask, keep, temperature=1.0)
    hook.remove()
    assert torch.allclose(shared, rows, atol=1e-5)
    sequences = seen[0]
    assert sequences.shape == (3, 9 + 7 + 3 + 1)  # 3 questions, the longest: a 9-token prompt, 11 completion tokens
    for group, first, last in [(0, 0, 3), (1, 3, 5), (2, 5, 6)]:
        tokens = [ids[first][mask[first].bool()][:prompts[first]]]
        tokens += [ids[row, -keep:][mask[row, -keep:].bool()] for row in range(first, last)]
        real = torch.cat(tokens)
        assert torch.equal(sequences[group, :len(real)], real)


def test_a_completion_is_not_attended_by_another_of_its_question():
    """Changing one completion changes no other completion's log-probabilities, in its group or another."""
    model = _model().eval()
    prompts, completions, groups = SHARED[0]
    ids, mask, keep = _batch(prompts, completions, groups=groups)
    with torch.no_grad():
        before, _ = packed_logps(model, ids, mask, keep, temperature=1.0, share_prompts=True)
        changed = ids.clone()
        real = mask[1, -keep:].bool()
        changed[1, -keep:][real] = (changed[1, -keep:][real] + 7) % VOCAB
        after, _ = packed_logps(model, changed, mask, keep, temperature=1.0, share_prompts=True)
    assert not torch.allclose(before[1], after[1])
    others = [0, 2, 3, 4, 5]
    assert torch.equal(before[others], after[others])


def test_shared_prompt_refuses_an_attention_without_an_explicit_mask():
    model = _model()
    ids, mask, keep = _batch([3, 3], [2, 2], groups=[0, 0])
    with pytest.raises(RecipeError, match="set model.padding_free=true"):
        packed_logps(model, ids, mask, keep, temperature=1.0, share_prompts=True, attention="flash_attention_2")


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
    (["model.padding_free=shared_prompt", "model.backend=unsloth"], "needs model.backend 'transformers'"),
])
def test_padding_free_with_what_replaces_the_forward_is_refused(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(CPU_RECIPE, overrides)


def _flex_model(device="cpu", head_dim=16):
    """On the CPU FlexAttention has no backward, so use_flex_attention refuses it (the test below): the
    forward-only test switches without the check."""
    model = _model(head_dim=head_dim).to(device)
    if device == "cpu":
        switch_to_flex_attention(model)
    else:
        use_flex_attention(model, torch.float32)
    return model


def test_flex_attention_where_it_has_no_backward_is_refused_with_the_fix_and_changes_nothing():
    """use_flex_attention first runs FlexAttention against SDPA, forward and backward: on the CPU the forward
    matches and the backward does not exist."""
    model = _model()
    with pytest.raises(ModelError, match=r"FlexAttention at 4 heads, 2 key/value heads of 16, float32, 320 tokens: "
                                         r"its backward raised NotImplementedError: .*; set model.padding_free=true"):
        use_flex_attention(model, torch.float32)
    assert model.config._attn_implementation == "sdpa"


def test_flex_attention_packs_one_sequence_and_gives_the_padded_logprobs():
    """On a GPU shared_prompt runs through FlexAttention: one sequence, no padding, a block mask. (Its backward
    needs a GPU, the test below; on the CPU the forward runs.) Other forwards keep SDPA."""
    model = _flex_model().eval()
    prompts, completions, groups = SHARED[0]
    ids, mask, keep = _batch(prompts, completions, groups=groups)
    seen = []
    hook = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        padded, _ = _padded_logps(model, ids, mask, keep, 1.0)
        packed, _ = packed_logps(model, ids, mask, keep, temperature=1.0, share_prompts=True, attention=FLEX_PACKED)
    hook.remove()
    completion = mask[:, -keep:].bool()
    assert torch.allclose(packed[completion], padded[completion], atol=1e-5)
    assert (packed[~completion] == 0).all()
    prompt_tokens = sum(prompts[first] for first in (0, 3, 5))  # each question's prompt once
    assert seen[1]["input_ids"].shape == (1, prompt_tokens + sum(completions))
    assert type(seen[1]["attention_mask"]).__name__ == "BlockMask"
    assert seen[0]["attention_mask"] is mask  # the padded forward: transformers' own SDPA mask from it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs a GPU")
@pytest.mark.parametrize("config", [
    {"num_attention_heads": 16, "num_key_value_heads": 2, "hidden_size": 2048},  # Qwen2.5-3B: head_dim 128
    {"num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584},  # Qwen2.5-7B: 28 heads, repeated
    {"num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896},  # Qwen2.5-0.5B: head_dim 64
    {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576},  # SmolLM2-135M: head_dim 64
], ids=["qwen2.5-3b", "qwen2.5-7b", "qwen2.5-0.5b", "smollm2-135m"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_flex_attention_matches_sdpa_at_the_attention_shapes_of_real_models_on_a_gpu(config, dtype):
    assert flex_attention_problem(Qwen2Config(**config), dtype, "cuda") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs a GPU")
@pytest.mark.parametrize("head_dim", [16, 64])
def test_flex_attention_gives_the_padded_lora_gradients_on_a_gpu(head_dim):
    model = _flex_model("cuda", head_dim)
    prompts, completions, groups = SHARED[0]
    ids, mask, keep = (t.cuda() if torch.is_tensor(t) else t for t in _batch(prompts, completions, groups=groups))
    completion = mask[:, -keep:].bool()
    padded, _ = _padded_logps(model, ids, mask, keep, 0.8)
    (padded * completion).sum().backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    packed, _ = packed_logps(model, ids, mask, keep, temperature=0.8, share_prompts=True, attention=FLEX_PACKED)
    (packed * completion).sum().backward()
    assert torch.allclose(packed[completion], padded[completion], atol=1e-4)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, padded_grads[name], atol=1e-4), name
