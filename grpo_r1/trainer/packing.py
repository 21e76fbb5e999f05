"""Training forwards without padding: a batch's rows packed into one sequence (model.padding_free).

TRL's GRPO scores a batch as one padded tensor: each row is its left-padded prompt and its
right-padded completion, so every row costs as many tokens as the longest prompt plus the
longest completion. Packed, only the real tokens go through the model: the rows are laid end to
end in one row of the batch, each with positions 0.. of its own, and transformers builds the
attention from those positions so that no token sees another row's (a block-diagonal causal
mask for SDPA and eager attention, variable-length kernels for flash attention). The logits are
computed only where a completion token is predicted, then put back in TRL's (rows, completion
length) layout, 0 at the padding that the loss masks out.

The positions differ from the padded pass's (which counts a row's left padding), but rotary
embeddings only see differences between positions, so the per-token log-probabilities are the
same up to float rounding (tests/unit/test_packing.py).
"""

from __future__ import annotations

from typing import Any

import torch


def packed_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, *,
                 temperature: float, compute_entropy: bool = False, entropy_requires_grad: bool = False,
                 takes_logits_to_keep: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities (and entropies) of the last `logits_to_keep` columns of `input_ids`, as TRL's
    padded forward gives them, from one packed forward of `model` (a causal LM, PEFT-wrapped or not).

    `attention_mask` marks each row's real tokens (prompt left-padded, completion right-padded).
    `takes_logits_to_keep`: whether the model's forward takes `logits_to_keep` (transformers' causal LMs do,
    as an index tensor too); without it every position's logits are computed. Returns (rows, logits_to_keep)
    tensors; positions that are padding hold 0."""
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    mask = attention_mask.bool()
    rows = input_ids.shape[0]
    start = input_ids.shape[1] - logits_to_keep  # the completion's first column
    counts = mask.sum(dim=1)
    offsets = counts.cumsum(0) - counts  # where each row starts in the packed sequence
    seen = mask.long().cumsum(dim=1)  # real tokens up to and including each column
    positions = (seen - 1)[mask]
    # A completion token at column j is predicted by the hidden state of column j - 1 (a real token whenever
    # column j is: the row's last prompt token or an earlier completion token).
    completion = mask[:, start:]
    source = offsets[:, None] + seen[:, start - 1:-1] - 1  # packed index of column j - 1
    index = source[completion]
    kwargs: dict[str, Any] = {"input_ids": input_ids[mask][None], "position_ids": positions[None],
                              "attention_mask": None, "use_cache": False}
    if takes_logits_to_keep:
        kwargs["logits_to_keep"] = index  # only the rows' predicting positions reach the lm_head
        logits = model(**kwargs).logits
    else:
        logits = model(**kwargs).logits[:, index]
    labels = input_ids[:, start:][completion][None]
    entropies = None
    if compute_entropy:
        picked, picked_entropies = selective_log_softmax_and_entropy(
            logits, labels, entropy_requires_grad=entropy_requires_grad, temperature=temperature)
        entropies = _unpack(picked_entropies[0], completion, rows)
    else:
        picked = selective_log_softmax(logits, labels, temperature=temperature)
    return _unpack(picked[0], completion, rows), entropies


def _unpack(values: torch.Tensor, completion: torch.Tensor, rows: int) -> torch.Tensor:
    """Values of the completion's real tokens back in (rows, completion length), 0 elsewhere (differentiable)."""
    out = values.new_zeros((rows, completion.shape[1]))
    return out.masked_scatter(completion, values)
