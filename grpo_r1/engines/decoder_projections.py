"""How the static decoder computes a layer's linear projections: a merged copy, or the adapter read live in few
products, over frozen base weights joined in place.

  * Read live (`live_groups`), the projections that read one input (q/k/v, o, gate/up, down) are computed
    together (`LiveGroup`): their A matrices stacked and their B matrices (times the scale) in one
    block-diagonal matrix, small copies refreshed every round (about 0.36 GB for Qwen2.5-3B with r64 on all
    seven projections). With each group's frozen base weights moved into one tensor with the stacked A as its
    last rows (`share_frozen_storage`: the parameters become row slices of it, same values), a group is two
    products (base and x A^T in one, then B added by addmm): 8 per layer instead of PEFT's 21, which made a
    token's matrix products 1.8x faster on an H200 at batch 6 (benchmarks/group_products.py: 2.80 against
    4.90 ms for the Qwen2.5-3B shapes).
  * Merged (`merged_layer`), base + scale * B @ A, refreshed before every round, with q/k/v and gate/up fused
    into one matrix each. At small batches a decode step is bound by the number of kernels, not by bandwidth,
    and this turns the 8 matrix products per layer into 4; it costs one more copy of the linear weights in GPU
    memory (5.5 GB for Qwen2.5-3B in bf16, about what a colocated vLLM would hold).

A 4-bit base (bitsandbytes' Linear4bit, QLoRA) is read either way. Live, each product goes through
`bitsandbytes.matmul_4bit`, which since bitsandbytes 0.50 runs a fused 4-bit kernel for the few rows of a
decode step (dequantizing and multiplying in one pass) and dequantizes into a temporary for longer inputs, as
its own heuristic decides per shape: no bf16 copy of the model is held. On a GPU `share_frozen_storage` also
moves each layer's packed q|k|v and gate|up weights into one tensor each, so a group is one 4-bit product
(block scales of the joined shape kept in float32, 0.27 GB for Qwen2.5-7B): 12 products per layer instead of
18, 4 of them 4-bit instead of 7. Merged, each round dequantizes the base into the copy with the adapter
added, so decoding runs at the speed of a bf16 model for the copy's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from grpo_r1.engines.decoder_weights import (
    FLOAT_DTYPES,
    INPUT_GROUPS,
    Layer,
    Projection,
    UnsupportedModel,
    Weights,
    read_weights,
)


@dataclass
class MergedLayer:
    """A layer's linear weights merged with the adapter and fused: q|k|v and gate|up in one matrix each."""

    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    sources: list[tuple[torch.Tensor, torch.Tensor | None, Projection]]  # (weight rows, bias rows, what goes there)


def merge_into(weight: torch.Tensor, bias: torch.Tensor | None, source: Projection) -> None:
    """Write `source`'s effective weight (base + scale * B @ A, computed in float32) and bias into the buffers."""
    base = source.base_weight()
    if source.lora_a is None:
        weight.copy_(base)
    else:
        weight.copy_(torch.addmm(base.float(), source.lora_b.float(), source.lora_a.float(), alpha=source.scale))
    if bias is not None:
        base_bias = source.current_bias()
        merged = base_bias.float() if base_bias is not None else torch.zeros(bias.shape, device=bias.device)
        if source.lora_b_bias is not None:
            merged = merged + source.scale * source.lora_b_bias.float()
        bias.copy_(merged)


def merged_layer(layer: Layer, dtype: torch.dtype) -> MergedLayer:
    """Empty merged, fused buffers in `dtype` for `layer` (q|k|v and gate|up one matrix each), with the sources
    `merge_into` fills them from before every round."""
    def fused(parts: list[Projection]) -> tuple[Projection, list]:
        first = parts[0]
        device = first.weight.device
        weight = torch.empty((sum(p.shape[0] for p in parts), first.shape[1]), dtype=dtype, device=device)
        has_bias = any(p.bias is not None or p.lora_b_bias is not None for p in parts)
        bias = torch.empty(weight.shape[0], dtype=dtype, device=device) if has_bias else None
        sources, row = [], 0
        for part in parts:
            rows = slice(row, row + part.shape[0])
            sources.append((weight[rows], None if bias is None else bias[rows], part))
            row = rows.stop
        return Projection(weight, bias), sources

    qkv, qkv_sources = fused([layer.q, layer.k, layer.v])
    o, o_sources = fused([layer.o])
    gate_up, gate_up_sources = fused([layer.gate, layer.up])
    down, down_sources = fused([layer.down])
    return MergedLayer(qkv, o, gate_up, down, qkv_sources + o_sources + gate_up_sources + down_sources)


# A group's first base weight, for the groups `share_frozen_storage` joined with room for the stacked A matrices
# after their base rows -> (the joined storage's address, the rows of room). Keyed by identity, weakly: nothing
# is kept alive.
_ROOM_FOR_A: WeakIdKeyDictionary = WeakIdKeyDictionary()


@dataclass
class LiveGroup:
    """Projections that read one input, computed with their adapters live (no merged copy) in few products.

    The parts' A matrices are stacked into one (ranks, in) matrix and their B matrices, times the
    scale, into one block-diagonal (outputs, ranks) matrix: copies in the compute dtype, refreshed
    every round (`refresh`), as the optimizer changes the adapter. A group is then base(x) + (x A^T) B^T,
    the adapter's term in the compute dtype (bf16 on a GPU) where PEFT computes it in the adapter's (float32
    by default): on the H200 the log-probability gap to the training forward was 0.031 on average, against
    0.037 for the merged copy (docs/benchmarks.md, session 16).
    When the parts' base weights are adjacent rows of one tensor with the stacked A as its last rows
    (`share_frozen_storage` puts them so; `joined`), one product gives both the base outputs and x A^T,
    and B is added by one addmm: two products for the whole group. When the base weights are adjacent
    but the A copy lives apart, three (base, A, B): so for a 4-bit base joined by `share_frozen_storage`,
    whose base is one 4-bit product (`_joined_4bit`). Otherwise each part's base is a product of its own and
    its B is added by an addmm of its own. A group with an adapter bias (PEFT's lora_bias) is computed part
    by part, as `Projection` does (`one_by_one`)."""

    parts: tuple[Projection, ...]
    base: Projection | None  # the parts' bases as one projection (their rows adjacent), else None
    lora_a: torch.Tensor | None  # the stacked A copies; None without adapters, or one by one
    lora_b: torch.Tensor | None  # the block-diagonal scaled B copies
    one_by_one: bool
    joined: bool = False  # lora_a is the last rows of base's weight (its bias, if any, is zero there)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each part's output for input `x` (..., in)."""
        if self.one_by_one:
            return [part(x) for part in self.parts]
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        sizes = [p.shape[0] for p in self.parts]
        if self.joined:
            both = self.base.base_product(flat)
            outputs = sum(sizes)
            out = torch.addmm(both[:, :outputs], both[:, outputs:], self.lora_b.t())
            return [part.reshape(*lead, -1) for part in out.split(sizes, dim=-1)]
        # F.linear even on a CPU: for an output of a few ranks it beats decoder_weights.linear's blocked products there
        low = F.linear(flat, self.lora_a) if self.lora_a is not None else None
        if self.base is not None:
            out = self.base.base_product(flat)
            if low is not None:
                out = torch.addmm(out, low, self.lora_b.t())
            return [part.reshape(*lead, -1) for part in out.split(sizes, dim=-1)]
        outs = []
        for part, (rows, cols) in zip(self.parts, self._blocks()):
            out = part.base_product(flat)
            if cols is not None:
                out = torch.addmm(out, low[:, cols], self.lora_b[rows, cols].t())
            outs.append(out.reshape(*lead, -1))
        return outs

    def refresh(self) -> None:
        """Copy the adapter's current A and scale * B into the stacked copies."""
        if self.lora_a is None:
            return
        for part, (rows, cols) in zip(self.parts, self._blocks()):
            if cols is not None:
                self.lora_a[cols].copy_(part.lora_a)
                self.lora_b[rows, cols].copy_(part.lora_b * part.scale)  # scaled in the adapter's dtype, rounded once

    def _blocks(self) -> list[tuple[slice, slice | None]]:
        """Each part's rows of the output and columns of the stacked ranks (None without an adapter)."""
        blocks, row, col = [], 0, 0
        for part in self.parts:
            rank = part.lora_a.shape[0] if part.lora_a is not None else 0
            blocks.append((slice(row, row + part.shape[0]), slice(col, col + rank) if rank else None))
            row, col = row + part.shape[0], col + rank
        return blocks


def _stacked_rank(parts: Sequence[Projection]) -> int:
    """The rows of a live group's stacked A (0 for a group without adapters or computed one by one)."""
    if any(p.lora_b_bias is not None for p in parts):
        return 0
    return sum(p.lora_a.shape[0] for p in parts if p.lora_a is not None)


def _stacked_shapes(parts: Sequence[Projection]) -> list[tuple[int, int]]:
    """The shapes of a live group's stacked A and block-diagonal B copies (none for a group computed one by one
    or without adapters)."""
    ranks = _stacked_rank(parts)
    if not ranks:
        return []
    return [(ranks, parts[0].shape[1]), (sum(p.shape[0] for p in parts), ranks)]


def _live_group(parts: Sequence[Projection], dtype: torch.dtype) -> LiveGroup:
    shapes = _stacked_shapes(parts)
    device = parts[0].weight.device
    one_by_one = any(p.lora_b_bias is not None for p in parts)
    joined = _joined_base(parts, dtype)
    if joined is not None:
        a = joined.weight[sum(p.shape[0] for p in parts):]  # written by refresh: the room after the base rows
        group = LiveGroup(tuple(parts), joined, a, torch.zeros(shapes[1], dtype=dtype, device=device), one_by_one,
                          joined=True)
    else:
        a, b = (torch.zeros(shape, dtype=dtype, device=device) for shape in shapes) if shapes else (None, None)
        group = LiveGroup(tuple(parts), _group_base(parts), a, b, one_by_one)
    group.refresh()
    return group


def live_groups(w: Weights, dtype: torch.dtype) -> list[list[LiveGroup]]:
    """Each layer's live groups, in INPUT_GROUPS order."""
    return [[_live_group([getattr(layer, name) for name in names], dtype) for names in INPUT_GROUPS]
            for layer in w.layers]


def live_groups_bytes(w: Weights, dtype: torch.dtype, shares: bool) -> int:
    """The bytes `live_groups(w, dtype)` holds: the stacked A and block-diagonal B copies, and the float32 block
    scales of the 4-bit groups it makes one product of (joined by `share_frozen_storage` when `shares`, or
    before)."""
    size = torch.empty((), dtype=dtype).element_size()
    groups = [[getattr(layer, name) for name in names] for layer in w.layers for names in INPUT_GROUPS]
    stacked = sum(math.prod(shape) for parts in groups for shape in _stacked_shapes(parts)) * size
    scales = sum(math.prod(p.shape) // p.quant_state.blocksize * 4 for parts in groups if _joinable_4bit(parts)
                 and (shares or _adjacent_rows([p.weight for p in parts]) is not None) for p in parts)
    return stacked + scales


def _group_base(parts: Sequence[Projection], extra_rows: int = 0) -> Projection | None:
    """The parts' base weights (and biases) as one projection over their rows and `extra_rows` more rows of
    their storage, when they are adjacent rows of one tensor each with that much room after them; None
    otherwise, or biases on some parts only. A single part with no extra rows is its own base. 4-bit parts
    whose packed weights are adjacent (and quantized alike) make one 4-bit projection (`_joined_4bit`), with no
    extra rows: the stacked A is not 4-bit."""
    if len(parts) == 1 and not extra_rows:
        return parts[0]
    if len({p.bias is None for p in parts}) != 1:
        return None
    quantized = any(p.quant_state is not None for p in parts)
    if quantized and (extra_rows or not _joinable_4bit(parts)):
        return None
    weight = _adjacent_rows([p.weight for p in parts], extra_rows)
    bias = None if parts[0].bias is None else _adjacent_rows([p.bias for p in parts], extra_rows)
    if weight is None or (parts[0].bias is not None and bias is None):
        return None
    return _joined_4bit(parts, weight, bias) if quantized else Projection(weight, bias)


def _joinable_4bit(parts: Sequence[Projection]) -> bool:
    """Whether 4-bit parts can be joined into one 4-bit product: two or more frozen 4-bit weights packed in bytes
    (bitsandbytes' default storage), not repacked for its CPU kernel, of one quantization (type, block size,
    code, dtype), compute dtype, device and input size, with biases on all parts or none, and each part a whole
    number of blocks (so their block scales, end to end, are the joined weight's). `share_frozen_storage` joins
    such a group, the decoder makes it one product, and `decoder_memory_bytes` counts its scales."""
    states = [p.quant_state for p in parts]
    first = states[0]
    return (len(parts) > 1 and all(s is not None and not getattr(s, "packing_format_for_cpu", False) for s in states)
            and all(isinstance(p.weight, torch.nn.Parameter) and not p.weight.requires_grad for p in parts)
            and len({p.bias is None for p in parts}) == 1
            and all(p.weight.dtype == torch.uint8 and p.weight.device == parts[0].weight.device for p in parts)
            and all(s.quant_type == first.quant_type and s.blocksize == first.blocksize and s.dtype == first.dtype
                    and torch.equal(s.code, first.code) for s in states)
            and len({p.compute_dtype for p in parts}) == 1
            and all(p.shape[1] == parts[0].shape[1] and math.prod(p.shape) % first.blocksize == 0 for p in parts))


def _block_scales(state: Any) -> torch.Tensor:
    """A 4-bit weight's per-block scales in float32: double-quantized ones dequantized as bitsandbytes does."""
    if not state.nested:
        return state.absmax.float()
    import bitsandbytes.functional as bnb_functional

    return (bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()


def _joined_4bit(parts: Sequence[Projection], weight: torch.Tensor, bias: torch.Tensor | None) -> Projection:
    """4-bit parts as one projection over their adjacent packed bytes `weight`: a quantization state of the
    joined shape whose block scales are the parts' own, end to end, in float32 (one product cannot take the
    parts' separate double quantizations, each with an offset of its own). The scales are a copy, 4 bytes per
    block of 64 weights (0.27 GB for Qwen2.5-7B's q|k|v and gate|up groups). For the prefill's many rows
    bitsandbytes dequantizes into a temporary, now of the joined shape (gate|up of Qwen2.5-7B: 271 MB in bf16,
    against 136 MB a part); the preflight's real round measures that peak."""
    import bitsandbytes.functional as bnb_functional

    first = parts[0].quant_state
    with torch.no_grad():
        scales = torch.cat([_block_scales(p.quant_state) for p in parts])
    state = bnb_functional.QuantState(scales, shape=torch.Size((sum(p.shape[0] for p in parts), parts[0].shape[1])),
                                      code=first.code, blocksize=first.blocksize, quant_type=first.quant_type,
                                      dtype=first.dtype)
    return Projection(weight, bias, quant_state=state, compute_dtype=parts[0].compute_dtype)


def _joined_base(parts: Sequence[Projection], dtype: torch.dtype) -> Projection | None:
    """The parts' base weights with the room `share_frozen_storage` left after them for the stacked A (and zero
    biases there) as one projection in `dtype`; None when the group has no stacked A, was not joined with room
    for it, or its storage moved since."""
    rank = _stacked_rank(parts)
    if not rank or _room_for_a(parts) < rank or parts[0].weight.dtype != dtype:
        return None
    return _group_base(parts, rank)


def _room_for_a(parts: Sequence[Projection]) -> int:
    """The rows `share_frozen_storage` left after a group's base weights for the stacked A (0 if none, or the
    storage it made was replaced since)."""
    first = parts[0].weight
    storage, room = _ROOM_FOR_A.get(first, (None, 0))
    return room if storage == first.untyped_storage().data_ptr() else 0


def _room_after(tensor: torch.Tensor, rows: int) -> int:
    """How many rows of `tensor`'s shape its storage holds after its first `rows` rows."""
    row_bytes = math.prod(tensor.shape[1:]) * tensor.element_size()
    used = tensor.storage_offset() * tensor.element_size() + rows * row_bytes
    return (tensor.untyped_storage().nbytes() - used) // row_bytes


def _adjacent_rows(tensors: Sequence[torch.Tensor], extra_rows: int = 0) -> torch.Tensor | None:
    """One tensor over `tensors` stacked along dim 0, and `extra_rows` more rows of their storage after them,
    when they are contiguous, one after the other, in one storage that holds those rows (a view, no copy);
    None otherwise."""
    first = tensors[0]
    offset = first.storage_offset()
    for t in tensors:
        if (t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or not t.is_contiguous()
                or t.dtype != first.dtype or t.shape[1:] != first.shape[1:] or t.storage_offset() != offset):
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    if _room_after(first, rows) < extra_rows:
        return None
    return first.detach().as_strided((rows + extra_rows, *first.shape[1:]), first.stride(), first.storage_offset())


def shares_storage(w: Weights, share_storage: bool | None) -> bool:
    """Whether a decoder read live joins the frozen storage: as asked, or by default on a GPU, where it saves
    kernel launches (on a CPU it gained nothing measurable: docs/benchmarks.md, session 16)."""
    return w.embed.device.type == "cuda" if share_storage is None else share_storage


def share_frozen_storage(model: Any) -> int:
    """Move each layer's frozen base weights (and biases) into one tensor per input group (q|k|v, o, gate|up,
    down), the parameters becoming row slices of it, with room after them for the group's stacked LoRA A
    (zeros, and zero bias), so the live decoder computes the group's base and x A^T in one product.

    Values, the training forward and gradients are unchanged (the parameters are the same tensors, holding the
    same numbers, only where they live moved); each group's old storage is freed as its new one is filled, and
    the room (the active adapter's rank times the input size per part with an adapter) stays with the model.
    A group is left alone unless all its base layers are plain frozen linear layers of one dtype, device and
    input size, all with biases or none (`_can_share`); a single projection without an adapter is left too.
    A 4-bit base's q|k|v and gate|up groups move their packed weights only, with no room (the stacked A is not
    4-bit), when they can be joined (`_joinable_4bit`): the decoder then makes one 4-bit product of each. A deep
    copy of a model so shared copies the whole joined tensor for each 4-bit slice (bitsandbytes' Params4bit
    deep-copies its data without the memo); nothing in grpo_r1 deep-copies a model.
    Returns the number of groups moved (0 when they already were, with room for the adapter's rank or more)."""
    try:
        w = read_weights(model)
    except UnsupportedModel:
        return 0
    moved = 0
    with torch.no_grad():
        for layer in w.layers:
            for names in INPUT_GROUPS:
                parts = [getattr(layer, name) for name in names]
                quantized = parts[0].quant_state is not None
                rank = 0 if quantized else _stacked_rank(parts)
                if _already_joined(parts, rank) or not _can_share(parts):
                    continue
                for name in ("weight",) if quantized else ("weight", "bias"):
                    params = [getattr(p, name) for p in parts]
                    if params[0] is None:
                        continue
                    room = params[0].new_zeros((rank, *params[0].shape[1:]))
                    joined, row = torch.cat([*(p.detach() for p in params), room]), 0
                    for param in params:
                        param.data = joined[row:row + param.shape[0]]
                        row += param.shape[0]
                if not quantized:
                    _ROOM_FOR_A[parts[0].weight] = (parts[0].weight.untyped_storage().data_ptr(), rank)
                moved += 1
    if moved and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the old storages, freed, go back to the device
    return moved


def _already_joined(parts: Sequence[Projection], rank: int) -> bool:
    """Whether a group's base weights are joined already: adjacent with room for `rank` rows or more (switching to
    the base model, rank 0, and back copies nothing), or packed 4-bit weights adjacent; a single projection
    without an adapter counts as joined (there is nothing to gain)."""
    if len(parts) == 1 and not rank:
        return True
    if parts[0].quant_state is not None:
        return _adjacent_rows([p.weight for p in parts]) is not None
    return _group_base(parts, rank) is not None and _room_for_a(parts) >= rank


def _can_share(parts: Sequence[Projection]) -> bool:
    """Whether a group's base weights can move: 4-bit weights that can be joined (their biases stay where they
    are), or plain frozen weights and biases of one float dtype, device and input size, with biases on all parts
    or none."""
    if any(p.quant_state is not None for p in parts):
        return _joinable_4bit(parts)
    first = parts[0].weight
    params = [t for p in parts for t in (p.weight, p.bias) if t is not None]
    return (all(isinstance(p.weight, torch.nn.Parameter) for p in parts) and not any(t.requires_grad for t in params)
            and all(t.dtype == first.dtype and t.device == first.device and t.dtype in FLOAT_DTYPES for t in params)
            and all(p.shape[1] == parts[0].shape[1] for p in parts)
            and len({p.bias is None for p in parts}) == 1)
