"""Training forwards without padding (model.padding_free): a batch's rows packed, each prompt once if asked.

TRL's GRPO scores a batch as one padded tensor: each row is its left-padded prompt and its
right-padded completion, so every row costs as many tokens as the longest prompt plus the
longest completion, and a question's prompt goes through the model once per completion.

`padding_free: true` lays the rows end to end in one row of the batch, each with positions 0..
of its own; transformers builds the attention from those positions so that no token sees another
row's (a block-diagonal causal mask for SDPA and eager attention, variable-length kernels for
flash attention).

`padding_free: shared_prompt` goes further: the consecutive rows that share a prompt (the
completions of one question) become one sequence, the prompt once and then each completion, and
an explicit mask lets each completion see the prompt and its own earlier tokens, never another
completion. Each such group is one row of the batch, padded to the longest group. The positions of
a completion continue from the prompt's, as in its own row, so the keys and values it attends to
are the ones its padded row would compute: the same log-probabilities from a prompt computed once.

On a GPU `shared_prompt` runs through FlexAttention (`use_flex_attention`): the packed forward then reads
the questions end to end in one sequence without padding, with a block mask, so the blocks a completion
does not see at all (another completion, another question) are skipped, and every other forward keeps SDPA.
Before it does, `flex_attention_problem` runs FlexAttention at the model's attention shape against SDPA, and a
compile that fails or a result that differs refuses the run with the fix. Without it (the CPU, where
FlexAttention has no backward), SDPA or eager attention take the dense mask.
With the dense mask SDPA computes every masked-out pair, which made it slower than the padded forward on a
GPU (docs/benchmarks.md has both).

Either way the logits are computed only where a completion token is predicted, then put back in
TRL's (rows, completion length) layout, 0 at the padding that the loss masks out. The positions
differ from the padded pass's (which counts a row's left padding), but rotary embeddings only see
differences between positions, so the per-token log-probabilities are the same up to float
rounding (tests/unit/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo_r1.errors import ModelError, RecipeError

# The attention implementations that take an explicit 4D mask (shared_prompt).
MASKED_ATTENTION = ("sdpa", "eager")
# The name transformers knows `packed_attention` by: SDPA, or FlexAttention for the packed forwards' block masks.
FLEX_PACKED = "grpo_r1_sdpa_or_flex"


@dataclass(frozen=True)
class _Layout:
    """What the model reads for a packed batch, and where each completion token's logits come from."""

    input_ids: torch.Tensor  # (sequences, length)
    position_ids: torch.Tensor  # (sequences, length)
    # None: from the positions; (sequences, 1, length, length), True (or 0) = seen; or a FlexAttention BlockMask
    attention_mask: Any
    sequence: torch.Tensor  # per completion token (in TRL's row-major order): the sequence that predicts it
    source: torch.Tensor  # ... and the position within that sequence


def packed_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, *,
                 temperature: float, share_prompts: bool = False, attention: str = "sdpa",
                 compute_entropy: bool = False, entropy_requires_grad: bool = False,
                 takes_logits_to_keep: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities (and entropies) of the last `logits_to_keep` columns of `input_ids`, as TRL's
    padded forward gives them, from one packed forward of `model` (a causal LM, PEFT-wrapped or not).

    `attention_mask` marks each row's real tokens (prompt left-padded, completion right-padded).
    `share_prompts`: consecutive rows with the same prompt are scored as one sequence, the prompt once, through an
    explicit mask in the form `attention` (the model's attention implementation: "sdpa", "eager" or FLEX_PACKED,
    see `use_flex_attention`) takes.
    `takes_logits_to_keep`: whether the model's forward takes `logits_to_keep` (transformers' causal LMs do, as an
    index tensor too); without it every position's logits are computed. Returns (rows, logits_to_keep) tensors;
    positions that are padding hold 0."""
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    mask = attention_mask.bool()
    start = input_ids.shape[1] - logits_to_keep  # the completion's first column
    completion = mask[:, start:]
    if share_prompts:
        check_attention(attention)
        layout = _shared_prompt_layout(input_ids, mask, start, attention)
    else:
        layout = _rows_layout(input_ids, mask, start)
    kwargs: dict[str, Any] = {"input_ids": layout.input_ids, "position_ids": layout.position_ids,
                              "attention_mask": layout.attention_mask, "use_cache": False}
    one = layout.input_ids.shape[0] == 1
    if takes_logits_to_keep:
        # Only the predicting positions reach the lm_head: exactly those for one sequence (repeats allowed),
        # their union for several.
        keep = layout.source if one else torch.unique(layout.source)
        logits = model(**kwargs, logits_to_keep=keep).logits
        logits = logits if one else logits[layout.sequence, torch.searchsorted(keep, layout.source)][None]
    else:
        logits = model(**kwargs).logits[layout.sequence, layout.source][None]
    labels = input_ids[:, start:][completion][None]
    rows, entropies = input_ids.shape[0], None
    if compute_entropy:
        picked, picked_entropies = selective_log_softmax_and_entropy(
            logits, labels, entropy_requires_grad=entropy_requires_grad, temperature=temperature)
        entropies = _unpack(picked_entropies[0], completion, rows)
    else:
        picked = selective_log_softmax(logits, labels, temperature=temperature)
    return _unpack(picked[0], completion, rows), entropies


def _rows_layout(input_ids: torch.Tensor, mask: torch.Tensor, start: int) -> _Layout:
    """Every row's real tokens end to end in one sequence, positions restarting at 0 for each row (from which
    transformers builds the mask)."""
    counts = mask.sum(dim=1)
    offsets = counts.cumsum(0) - counts  # where each row starts in the packed sequence
    seen = mask.long().cumsum(dim=1)  # real tokens up to and including each column
    # A completion token at column j is predicted by the hidden state of column j - 1 (a real token whenever
    # column j is: the row's last prompt token or an earlier completion token).
    source = (offsets[:, None] + seen[:, start - 1:-1] - 1)[mask[:, start:]]
    return _Layout(input_ids=input_ids[mask][None], position_ids=(seen - 1)[mask][None], attention_mask=None,
                   sequence=torch.zeros_like(source), source=source)


def _shared_prompt_layout(input_ids: torch.Tensor, mask: torch.Tensor, start: int, attention: str) -> _Layout:
    """One sequence per run of consecutive rows with the same prompt: the prompt's real tokens once, then
    each row's completion tokens; each completion sees the prompt and itself, causally."""
    rows, device = input_ids.shape[0], input_ids.device
    prompt = torch.where(mask[:, :start], input_ids[:, :start], -1)
    leads = torch.ones(rows, dtype=torch.bool, device=device)  # the first row of each group
    leads[1:] = (prompt[1:] != prompt[:-1]).any(dim=1)
    group = leads.long().cumsum(0) - 1
    # The real tokens each group keeps, row-major: its first row's prompt, then every row's completion.
    kept = mask.clone()
    kept[~leads, :start] = False
    row_of = torch.arange(rows, device=device)[:, None].expand_as(kept)[kept]
    column_of = torch.arange(kept.shape[1], device=device).expand_as(kept)[kept]
    is_prompt = column_of < start
    group_of = group[row_of]
    row_in_group = row_of - torch.nonzero(leads)[:, 0][group_of]
    groups = int(group[-1]) + 1
    sizes = torch.bincount(group_of, minlength=groups)
    index = torch.arange(len(row_of), device=device) - (sizes.cumsum(0) - sizes)[group_of]  # place in its group
    prompt_length = torch.bincount(group_of[is_prompt], minlength=groups)[group_of]
    rank = mask[:, start:].long().cumsum(dim=1)  # a completion token's place in its completion, from 1
    completion_rank = rank[row_of[~is_prompt], column_of[~is_prompt] - start]
    positions = torch.where(is_prompt, index, 0)
    positions[~is_prompt] = prompt_length[~is_prompt] + completion_rank - 1
    # 0: a group's prompt; r + 1: the completion of its r-th row; -1: padding after the group's tokens.
    segment = torch.zeros_like(index)
    segment[~is_prompt] = row_in_group[~is_prompt] + 1
    # The first completion token is predicted by the prompt's last; every other by the token before it.
    completion_index = index[~is_prompt]
    source = torch.where(completion_rank == 1, prompt_length[~is_prompt] - 1, completion_index - 1)
    if attention == FLEX_PACKED:  # the groups end to end in one sequence (kept is in that order already)
        source = source + (sizes.cumsum(0) - sizes)[group_of[~is_prompt]]
        return _Layout(input_ids=input_ids[kept][None], position_ids=positions[None],
                       attention_mask=_block_mask(group_of, segment), sequence=torch.zeros_like(source), source=source)
    length = int(sizes.max())
    grid = torch.zeros((groups, length), dtype=input_ids.dtype, device=device)
    grid_positions = torch.zeros_like(grid)
    grid_segments = torch.full_like(grid, -1)
    grid[group_of, index] = input_ids[kept]
    grid_positions[group_of, index] = positions
    grid_segments[group_of, index] = segment
    query, key = grid_segments[:, :, None], grid_segments[:, None, :]
    causal = torch.ones((length, length), dtype=torch.bool, device=device).tril()
    seen = causal & ((key == query) | (key == 0))  # padding sees itself: no fully masked row
    attention_mask = seen[:, None]
    if attention == "eager":  # eager attention adds its mask to the scores (float32: promotes, never overflows)
        attention_mask = torch.zeros(seen.shape, device=device).masked_fill(~seen, torch.finfo(torch.float32).min)
        attention_mask = attention_mask[:, None]
    return _Layout(input_ids=grid, position_ids=grid_positions, attention_mask=attention_mask,
                   sequence=group_of[~is_prompt], source=source)


def _block_mask(document: torch.Tensor, segment: torch.Tensor) -> Any:
    """FlexAttention's block mask over one packed sequence: a token sees the earlier tokens of its own document
    (question) that are in its own segment (completion) or in segment 0 (the question's prompt)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def seen(batch: torch.Tensor, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        same = (document[key] == document[query]) & ((segment[key] == segment[query]) | (segment[key] == 0))
        return (key <= query) & same

    length = document.shape[0]
    return create_block_mask(seen, B=None, H=None, Q_LEN=length, KV_LEN=length, device=document.device)


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' SDPA attention, or its FlexAttention for a block mask (the packed forwards')."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, BlockMask):
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_flex_attention(model: Any, dtype: torch.dtype) -> None:
    """Run the shared-prompt forwards of `model` (a transformers model using SDPA, PEFT-wrapped or not, computing
    in `dtype`) through FlexAttention with a block mask, every other forward through SDPA as before. Refused,
    with the fix, where FlexAttention fails for the model's attention shape (`flex_attention_problem`; the CPU has
    no backward), before any training step."""
    if problem := flex_attention_problem(model.config, dtype, model.device):
        raise ModelError(f"model.padding_free 'shared_prompt' runs through FlexAttention on a GPU, and here it does "
                         f"not work: {problem}; set model.padding_free=true (each row packed, transformers' own "
                         "mask) or false")
    switch_to_flex_attention(model)


def switch_to_flex_attention(model: Any) -> None:
    """Give `model` the attention `packed_attention` (FLEX_PACKED), without checking that FlexAttention works
    for it (`use_flex_attention` does)."""
    from peft import PeftModel
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLEX_PACKED, packed_attention)
    AttentionMaskInterface.register(FLEX_PACKED, sdpa_mask)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.set_attn_implementation(FLEX_PACKED)
    if base.config._attn_implementation != FLEX_PACKED:  # transformers only warns for a model that cannot switch
        raise RecipeError(f"model.padding_free 'shared_prompt': {type(base).__name__} cannot switch its attention "
                          "to FlexAttention for the shared prompts' block mask; set model.padding_free=true")


def flex_attention_problem(config: Any, dtype: torch.dtype, device: torch.device | str) -> str | None:
    """What goes wrong when FlexAttention runs the shared prompts' block mask for a model of `config` (a
    transformers config) computing in `dtype` on `device`, or None when nothing does.

    Against SDPA with the same mask made dense (this checks the kernel; the tests check the mask's rule), at two
    lengths (the first compile is static, the one after a new length dynamic: the ones the training forwards then
    reuse): a forward without gradients (the old and reference log-probabilities), then one with its backward
    (the policy's). A compile that fails (inductor
    finds no kernel for some head sizes), a backward that does not exist (the CPU's) and outputs or gradients
    that differ from SDPA's beyond `dtype`'s rounding are each reported, with the shape that failed."""
    from torch.nn.attention.flex_attention import create_mask
    from transformers.integrations.flex_attention import flex_attention_forward

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.head_dim if getattr(config, "head_dim", None) else config.hidden_size // heads
    shape = f"FlexAttention at {heads} heads, {kv_heads} key/value heads of {head_dim}, " \
            f"{str(dtype).removeprefix('torch.')}"
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    module = torch.nn.Module()  # what transformers reads from it: .training (the policy forward's: True)
    generator = torch.Generator(device=device).manual_seed(0)
    for length in (320, 704):
        places = torch.arange(length, device=device)
        document = (places >= length // 2).long()  # two questions
        segment = (places % (length // 2)) // (length // 8)  # each: its prompt (0), then 3 completions
        query, key, value = (torch.randn((1, h, length, head_dim), generator=generator, device=device, dtype=dtype,
                                         requires_grad=True) for h in (heads, kv_heads, kv_heads))
        block_mask = _block_mask(document, segment)
        seen = create_mask(block_mask.mask_mod, None, None, length, length, device=device)  # the same rule, dense
        groups = heads // kv_heads
        dense = torch.nn.functional.scaled_dot_product_attention(
            query, key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1), attn_mask=seen)
        dense = dense.transpose(1, 2)  # as transformers' attention returns it: (batch, length, heads, head_dim)
        dense_grads = torch.autograd.grad(dense.float().square().sum(), (query, key, value))
        stage = "forward"
        try:
            with torch.no_grad():
                flex, _ = flex_attention_forward(module, query.detach(), key.detach(), value.detach(), block_mask,
                                                 scaling=head_dim ** -0.5)
            problem = _differs([("output", dense, flex)], tolerance)
            if problem is None:
                stage = "backward"
                flex, _ = flex_attention_forward(module, query, key, value, block_mask, scaling=head_dim ** -0.5)
                flex_grads = torch.autograd.grad(flex.float().square().sum(), (query, key, value))
                problem = _differs(zip(("query", "key", "value"), dense_grads, flex_grads), tolerance)
        except Exception as e:  # noqa: BLE001 - any failure of the compiled kernel is the answer
            lines = str(e).strip().splitlines()
            return f"{shape}, {length} tokens: its {stage} raised {type(e).__name__}{': ' + lines[0] if lines else ''}"
        if problem:
            return f"{shape}, {length} tokens: {problem}"
    return None


def _differs(compared: Any, tolerance: float) -> str | None:
    """The first of `compared` ((name, SDPA's, FlexAttention's) tensors) whose relative error exceeds `tolerance`."""
    for name, want, got in compared:
        error = float((got.detach().float() - want.detach().float()).norm() / want.detach().float().norm())
        if not error <= tolerance:
            what = name if name == "output" else f"{name} gradient"
            return f"its {what} differs from SDPA's by {error:.2g} (relative)"
    return None


def check_attention(attention: str) -> None:
    """Refuse an attention implementation that cannot take the shared prompt's explicit mask."""
    if attention not in (*MASKED_ATTENTION, FLEX_PACKED):
        raise RecipeError(f"model.padding_free 'shared_prompt' needs SDPA or eager attention (an explicit mask per "
                         f"group of completions), but the model uses {attention!r}; set model.padding_free=true")


def _unpack(values: torch.Tensor, completion: torch.Tensor, rows: int) -> torch.Tensor:
    """Values of the completion's real tokens back in (rows, completion length), 0 elsewhere (differentiable)."""
    out = values.new_zeros((rows, completion.shape[1]))
    return out.masked_scatter(completion, values)
