"""A sampling loop of our own for Llama-family models (Llama, Qwen2): static KV cache, one CUDA graph per token.

transformers' `generate` with a static cache and torch.compile runs the model's decode step
as a compiled graph, but everything around it (logits processors, stopping criteria, cache
bookkeeping, a host sync every token) stays in Python: on an H100 with the Qwen2.5-3B
architecture that loop cost about 13 ms per token on top of an 8.6 ms step
(docs/benchmarks.md). This module replaces the whole loop:

  * the decoder reads the trainer's own base weights in place and the active adapter live,
    unmerged, so there is no second copy of the model: the projections that read one input
    (q/k/v, o, gate/up, down) are computed together, their A matrices stacked and their B
    matrices (times the scale) in one block-diagonal matrix, small copies refreshed every round
    (about 0.36 GB for Qwen2.5-3B with r64 on all seven projections). With each group's frozen
    base weights moved into one tensor with the stacked A as its last rows
    (`share_frozen_storage`: the parameters become row slices of it, same values), a group is
    two products (base and x A^T in one, then B added by addmm): 8 per layer instead of PEFT's
    21, which made a token's matrix products 1.8x faster on an H200 at batch 6
    (benchmarks/group_products.py: 2.80 against 4.90 ms for the Qwen2.5-3B shapes);
  * one token step (the model, temperature sampling, the sampled token's log-probability,
    the stop check, the position counter) is captured once as a CUDA graph and replayed, so
    decoding a token is one graph launch; the host looks at the "all finished" flag every
    `check_every` tokens only (on a CPU after every token: reading it waits for nothing);
  * the model part of the step can go through torch.compile first (fused elementwise kernels);
  * optionally (`merged=True`) it samples from a merged copy of the linear weights instead:
    base + scale * B @ A, refreshed before every round, with q/k/v and gate/up fused into one
    matrix each. At small batches a decode step is bound by the number of kernels, not by
    bandwidth, and this turns the 8 matrix products per layer into 4; it costs
    one more copy of the linear weights in GPU memory (5.5 GB for Qwen2.5-3B in bf16, about
    what a colocated vLLM would hold).

Positions: every row uses positions 0..L-1 of the padded batch, left padding included, as the
trainer's forward does when it gets no position ids; rotary embeddings only see position
differences, so a row's padding changes nothing.

A 4-bit base (bitsandbytes' Linear4bit, QLoRA) is read either way. Live, each product goes
through `bitsandbytes.matmul_4bit`, which since bitsandbytes 0.50 runs a fused 4-bit kernel for
the few rows of a decode step (dequantizing and multiplying in one pass) and dequantizes into a
temporary for longer inputs, as its own heuristic decides per shape: no bf16 copy of the model is
held, and the step is still one CUDA graph. On a GPU `share_frozen_storage` also moves each layer's packed
q|k|v and gate|up weights into one tensor each, so a group is one 4-bit product (block scales of the joined
shape kept in float32, 0.27 GB for Qwen2.5-7B): 12 products per layer instead of 18, 4 of them 4-bit instead
of 7. Merged, each round dequantizes the base into the copy
with the adapter added, so decoding runs at the speed of a bf16 model for the copy's memory.
Anything else (other architectures, DoRA, several active adapters) raises `UnsupportedModel`; the
engine then falls back to transformers' generate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from packaging.version import Version
from torch.utils.weak import WeakIdKeyDictionary

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class UnsupportedModel(Exception):
    """The model is outside what the static decoder implements; the message says why."""


@dataclass
class Projection:
    """One linear layer as the decoder computes it: base weight (+ bias) + scale * B(A(x)).

    `quant_state` is set when `weight` is a bitsandbytes 4-bit weight (packed bytes): `base_weight`
    dequantizes it for a merge, and a call multiplies through bitsandbytes' 4-bit matmul in the
    layer's compute dtype. Its bias is re-read from `module` at each round (`current_bias`):
    bitsandbytes recasts a 4-bit layer's bias to the input's dtype in its forward, a new tensor
    each time the dtype changes, so the decoder calls it with a copy of its own (`bias`)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    lora_b_bias: torch.Tensor | None = None
    scale: float = 1.0
    quant_state: Any = None
    compute_dtype: torch.dtype | None = None  # a 4-bit layer's: what its forward computes in
    module: Any = None  # a 4-bit layer itself

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the unpacked weight."""
        return tuple(self.quant_state.shape) if self.quant_state is not None else tuple(self.weight.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weight computes in (a 4-bit layer's compute dtype, else its weight's dtype)."""
        if self.quant_state is None:
            return self.weight.dtype
        return self.compute_dtype or self.quant_state.dtype

    def base_weight(self) -> torch.Tensor:
        """The base weight as a plain tensor (a 4-bit weight dequantized, as bitsandbytes' matmul does)."""
        if self.quant_state is None:
            return self.weight
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(self.weight, self.quant_state)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_state is not None:
            return self._call_4bit(x)
        out = self.base_product(x)
        if self.lora_a is not None:
            out = (out + self._low_rank(x)).to(out.dtype)  # as PEFT adds it: in the wider dtype, then rounded
        return out

    def base_product(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer alone (+ bias): a 4-bit weight through bitsandbytes' 4-bit matmul in the compute dtype."""
        if self.quant_state is None:
            return _linear(x, self.weight, self.bias)
        import bitsandbytes

        return bitsandbytes.matmul_4bit(x.to(self.dtype), self.weight, bias=self.bias, quant_state=self.quant_state)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B(A(x)), in the adapter's dtype."""
        return F.linear(F.linear(x.to(self.lora_a.dtype), self.lora_a), self.lora_b, self.lora_b_bias) * self.scale

    def _call_4bit(self, x: torch.Tensor) -> torch.Tensor:
        """What PEFT's LoRA layer over bitsandbytes' Linear4bit computes without autocast: the 4-bit product in
        the compute dtype, plus the adapter's term rounded to that dtype first."""
        out = self.base_product(x)
        if self.lora_a is not None:
            out = out + self._low_rank(x).to(out.dtype)
        return out

    def current_bias(self) -> torch.Tensor | None:
        """The bias as the layer holds it now."""
        return self.module.bias if self.module is not None else self.bias

    def tensors(self) -> list[torch.Tensor]:
        """The tensors read in place: the weights, and a 4-bit weight's quantization state (its bias is not: it is
        read through a copy, or re-read at each merge)."""
        bias = None if self.module is not None else self.bias
        return [t for t in (self.weight, bias, self.lora_a, self.lora_b, self.lora_b_bias, *self._quant_tensors())
                if t is not None]

    def _quant_tensors(self) -> list[torch.Tensor | None]:
        state = self.quant_state
        if state is None:
            return []
        nested = getattr(state, "state2", None)
        return [state.absmax, state.code, getattr(state, "offset", None),
                *((nested.absmax, nested.code) if nested is not None else ())]


PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")  # a Layer's linear layers, in order


@dataclass
class Layer:
    input_norm: torch.Tensor
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    post_norm: torch.Tensor
    gate: Projection
    up: Projection
    down: Projection

    def projections(self) -> tuple[Projection, ...]:
        return tuple(getattr(self, name) for name in PROJECTIONS)


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


def _merged_layer(layer: Layer, dtype: torch.dtype) -> MergedLayer:
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


INPUT_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))  # a Layer's projections by the input they read

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
    but the A copy lives apart, three (base, A, B). Otherwise each part's base is a product of its own and
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
        # F.linear even on a CPU: for an output of a few ranks it beats _linear's blocked products there
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


def _live_groups(w: Weights, dtype: torch.dtype) -> list[list[LiveGroup]]:
    """Each layer's live groups, in INPUT_GROUPS order."""
    return [[_live_group([getattr(layer, name) for name in names], dtype) for names in INPUT_GROUPS]
            for layer in w.layers]


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


@dataclass
class Weights:
    """The tensors of a Llama-family causal LM, read from the (PEFT-wrapped) transformers model."""

    embed: torch.Tensor
    layers: list[Layer]
    norm: torch.Tensor
    lm_head: Projection
    eps: float
    heads: int
    kv_heads: int
    head_dim: int
    rotary: Any  # the model's own rotary-embedding module (so every rope scaling type is right)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.embed, self.norm, *self.lm_head.tensors()]
        for layer in self.layers:
            out += [layer.input_norm, layer.post_norm]
            for proj in layer.projections():
                out += proj.tensors()
        return out


def read_weights(model: Any) -> Weights:
    """The decoder's view of `model` (a transformers Llama/Qwen2 causal LM, PEFT-wrapped or not)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal_lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(f"model type {model_type!r} "
                               f"(the static decoder knows {', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"activation {config.hidden_act!r} (the static decoder implements silu)")
    if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
        raise UnsupportedModel("sliding-window attention layers")
    inner = causal_lm.model
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = []
    for block in inner.layers:
        attn, mlp = block.self_attn, block.mlp
        layers.append(Layer(
            input_norm=_norm_weight(block.input_layernorm), q=_projection(attn.q_proj), k=_projection(attn.k_proj),
            v=_projection(attn.v_proj), o=_projection(attn.o_proj),
            post_norm=_norm_weight(block.post_attention_layernorm),
            gate=_projection(mlp.gate_proj), up=_projection(mlp.up_proj), down=_projection(mlp.down_proj),
        ))
    return Weights(
        embed=_plain(inner.embed_tokens.weight, "embed_tokens"), layers=layers, norm=_norm_weight(inner.norm),
        lm_head=_projection(causal_lm.lm_head), eps=float(config.rms_norm_eps), heads=heads,
        kv_heads=config.num_key_value_heads, head_dim=head_dim, rotary=inner.rotary_emb,
    )


def decoder_memory_bytes(model: Any, *, batch: int, length: int, merged: bool,
                         share_storage: bool | None = None) -> int:
    """GPU bytes a StaticDecoder of this shape holds between rounds: its KV cache, and the merged copy if any, or
    read live, the stacked adapter copies (and for a 4-bit base, its bias copies and joined groups' block scales).
    0 for a model it does not support (the engine then uses transformers' generate)."""
    try:
        w = read_weights(model)
    except UnsupportedModel:
        return 0
    dtype = _decode_dtype(w)
    size = torch.empty((), dtype=dtype).element_size()
    cache = 2 * len(w.layers) * batch * w.kv_heads * length * w.head_dim * size
    cache += sum(t.numel() for t in _cast_sources(w, dtype)) * size  # copies in the compute dtype (4-bit models)
    if not merged:
        groups = [[getattr(layer, name) for name in names] for layer in w.layers for names in INPUT_GROUPS]
        stacked = sum(math.prod(shape) for parts in groups for shape in _stacked_shapes(parts))
        shares = _shares_storage(w, share_storage)
        scales = sum(math.prod(p.shape) // p.quant_state.blocksize * 4  # float32 block scales of joined 4-bit groups
                     for parts in groups if _joinable_4bit(parts)
                     and (shares or _adjacent_rows([p.weight for p in parts]) is not None) for p in parts)
        return cache + (sum(p.shape[0] for p in _live_4bit_biased(w)) + stacked) * size + scales  # 4-bit biases
    linear = sum(math.prod(p.shape) for layer in w.layers for p in layer.projections())
    return cache + linear * size


def _shares_storage(w: Weights, share_storage: bool | None) -> bool:
    """Whether a decoder read live joins the frozen storage: as asked, or by default on a GPU, where it saves
    kernel launches (on a CPU it gained nothing measurable: docs/benchmarks.md, session 16)."""
    return w.embed.device.type == "cuda" if share_storage is None else share_storage


def _is_quantized(w: Weights) -> bool:
    return any(p.quant_state is not None for layer in w.layers for p in layer.projections())


def _decode_dtype(w: Weights) -> torch.dtype:
    """The dtype the decoder computes in: the model's (its embedding's), or a 4-bit model's compute dtype
    (QLoRA's preparation may have left its embedding and norms in float32)."""
    return w.layers[0].q.dtype if _is_quantized(w) else w.embed.dtype


def _cast_sources(w: Weights, dtype: torch.dtype) -> list[torch.Tensor]:
    """The embedding, norm and lm_head tensors not already in `dtype`, each once (a tied lm_head is the embedding)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in (w.embed, w.norm, w.lm_head.weight, w.lm_head.bias,
                   *(norm for layer in w.layers for norm in (layer.input_norm, layer.post_norm))):
        if tensor is not None and tensor.dtype != dtype:
            seen.setdefault(tensor.data_ptr(), tensor)
    return list(seen.values())


def _in_dtype(w: Weights, dtype: torch.dtype) -> tuple[Weights, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`w` with the embedding, norms and lm_head in `dtype`, and the (copy, source) pairs that made it.

    QLoRA's preparation (PEFT's prepare_model_for_kbit_training) keeps these in float32 beside the
    bf16 compute dtype of the 4-bit weights; the decoder computes in one dtype, so it reads copies
    (refreshed every round, as a trained embedding would change). A tensor already in `dtype` is
    read in place; a tied embedding and lm_head share one copy."""
    sources = _cast_sources(w, dtype)
    if not sources:
        return w, []
    copies = {t.data_ptr(): torch.empty(t.shape, dtype=dtype, device=t.device) for t in sources}

    def cast(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else copies.get(tensor.data_ptr(), tensor)

    layers = [dataclasses.replace(layer, input_norm=cast(layer.input_norm), post_norm=cast(layer.post_norm))
              for layer in w.layers]
    head = dataclasses.replace(w.lm_head, weight=cast(w.lm_head.weight), bias=cast(w.lm_head.bias))
    pairs = [(copies[t.data_ptr()], t) for t in sources]
    return dataclasses.replace(w, embed=cast(w.embed), layers=layers, norm=cast(w.norm), lm_head=head), pairs


def _live_4bit_biased(w: Weights) -> list[Projection]:
    """The 4-bit projections that have a bias (Qwen2's q, k and v)."""
    return [p for layer in w.layers for p in layer.projections()
            if p.quant_state is not None and p.module.bias is not None]


def _with_bias_copies(w: Weights, dtype: torch.dtype) -> tuple[Weights, list[tuple[torch.Tensor, Projection]]]:
    """`w` with each 4-bit projection's bias replaced by a copy in `dtype`, and the (copy, projection) pairs.

    A 4-bit layer's bias is recast (a new tensor) by bitsandbytes' forward whenever its dtype differs from
    the input's, so a captured step cannot read it in place; the copies are refreshed every round. The copies
    of one input group (Qwen2's q, k, v) are adjacent slices of one tensor, as a joined 4-bit product needs."""
    pairs: list[tuple[torch.Tensor, Projection]] = []

    def copied(layer: Layer) -> dict[str, Projection]:
        out = {}
        for names in INPUT_GROUPS:
            biased = {name: proj for name in names
                      if (proj := getattr(layer, name)).quant_state is not None and proj.module.bias is not None}
            if not biased:
                continue
            sizes = [proj.shape[0] for proj in biased.values()]
            copies = torch.empty(sum(sizes), dtype=dtype, device=next(iter(biased.values())).weight.device)
            for (name, proj), copy in zip(biased.items(), copies.split(sizes)):
                pairs.append((copy, proj))
                out[name] = dataclasses.replace(proj, bias=copy)
        return out

    layers = [dataclasses.replace(layer, **copied(layer)) for layer in w.layers]
    return dataclasses.replace(w, layers=layers), pairs


def _plain(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.dtype not in FLOAT_DTYPES or type(tensor).__name__ not in ("Parameter", "Tensor"):
        raise UnsupportedModel(f"{what} is stored as {type(tensor).__name__} {tensor.dtype} (quantized?)")
    return tensor


def _norm_weight(module: Any) -> torch.Tensor:
    if not hasattr(module, "weight") or getattr(module, "bias", None) is not None:
        raise UnsupportedModel(f"norm {type(module).__name__} is not a plain RMSNorm")
    return _plain(module.weight, type(module).__name__)


def _projection(module: Any) -> Projection:
    """A plain nn.Linear or bitsandbytes Linear4bit, or PEFT's LoRA layer with one active, unmerged, non-DoRA
    adapter over one of them."""
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
        base = module.base_layer
        active = [name for name in module.active_adapters if name in module.lora_A]
        if getattr(module, "disable_adapters", False) or getattr(module, "merged", False) or not active:
            return _projection(base)
        if len(active) > 1:
            raise UnsupportedModel(f"{len(active)} active LoRA adapters on one layer")
        name = active[0]
        if module.use_dora.get(name, False):
            raise UnsupportedModel("DoRA adapters")
        plain = _projection(base)
        plain.lora_a = _plain(module.lora_A[name].weight, "lora_A")
        plain.lora_b = _plain(module.lora_B[name].weight, "lora_B")
        plain.lora_b_bias = module.lora_B[name].bias
        plain.scale = float(module.scaling[name])
        return plain
    quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
    if type(module).__name__ == "Linear4bit" and quant_state is not None:
        if getattr(quant_state, "packing_format_for_cpu", False):
            raise UnsupportedModel("a 4-bit weight repacked for bitsandbytes' CPU kernel "
                                   "(an eval-mode forward on a CPU)")
        if _bitsandbytes_version() < Version("0.50"):
            raise UnsupportedModel("a 4-bit base with bitsandbytes older than 0.50, whose matmul_4bit takes the "
                                   "weight transposed (pip install 'bitsandbytes>=0.50')")
        return Projection(module.weight, module.bias, quant_state=quant_state,
                          compute_dtype=getattr(module, "compute_dtype", None), module=module)
    if not isinstance(module, torch.nn.Linear) or type(module).__name__ != "Linear":
        raise UnsupportedModel(f"layer type {type(module).__module__}.{type(module).__name__}")
    return Projection(_plain(module.weight, "a linear weight"), module.bias)


def _bitsandbytes_version() -> Version:
    import bitsandbytes

    return Version(bitsandbytes.__version__)


def _distinct_rows(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
    """The first row of each distinct (ids, mask) row, in order, and for every row the index of its
    distinct row among them (None when all rows differ)."""
    first: dict[tuple[int, ...], int] = {}
    rows, inverse = [], []
    for row, key in enumerate(map(tuple, torch.cat([input_ids, mask.long()], dim=1).tolist())):
        if key not in first:
            first[key] = len(rows)
            rows.append(row)
        inverse.append(first[key])
    if len(rows) == len(inverse):
        return rows, None
    return rows, torch.tensor(inverse, dtype=torch.long, device=input_ids.device)


# A decode step on a CPU multiplies a few rows by each weight. torch 2.13's CPU matmul (an AMD EPYC
# with AVX-512) is much faster at that as W @ x.T with at most 4 columns than as F.linear(x, W): one
# round of 4 completions x 96 tokens of SmolLM2-135M took 4.47 s this way and 8.23 s through F.linear
# (docs/benchmarks.md, "CPU: README command 1 end to end"). So few rows go in blocks of 4 that way.
FEW_ROWS = 16  # at most this many rows (a decode step's batch) take the blocked path on a CPU
ROW_BLOCK = 4


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias); on a CPU for at most FEW_ROWS rows, as weight @ block.T per block of
    ROW_BLOCK rows (the same products, summed in another order)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 0 < rows <= FEW_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    blocks = [torch.mm(weight, flat[i:i + ROW_BLOCK].t()) for i in range(0, rows, ROW_BLOCK)]
    out = (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)).t()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class StaticDecoder:
    """Sample `batch` rows of at most `max_new` tokens after prompts left-padded to `width`.

    Build one per (batch, width, max_new) shape and call `sample` for every round: the CUDA
    graph is captured on the first call and replayed after. `sample` checks that the weights
    still live where the graph reads them (`stale()`): if not, build a new decoder.
    `temperature` 0 decodes greedily (argmax; the recorded logprobs are then at temperature 1,
    and `top_p` is ignored). Read live (not `merged`), the decoder first moves each group of the
    model's frozen base weights into one tensor with room for the stacked A (`share_frozen_storage`)
    when `share_storage` is True, or by default on a GPU.
    """

    def __init__(self, model: Any, *, batch: int, width: int, max_new: int, temperature: float, top_p: float,
                 stop_token_ids: Sequence[int], pad_token_id: int, compile: bool, graph: bool,
                 merged: bool = False, share_storage: bool | None = None, check_every: int = 8) -> None:
        self.model = model
        read = read_weights(model)  # an unsupported model is refused before anything is changed
        if not merged and _shares_storage(read, share_storage) and share_frozen_storage(model):
            read = read_weights(model)
        self.batch, self.width, self.max_new = batch, width, max_new
        self.length = width + max_new
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.pad_token_id, self.check_every = int(pad_token_id), max(1, int(check_every))
        self._pointers = [t.data_ptr() for t in read.tensors()]
        if read.lm_head.quant_state is not None:
            raise UnsupportedModel("a 4-bit lm_head")
        self.device = read.embed.device
        self.dtype = _decode_dtype(read)
        self.w, self._casts = _in_dtype(read, self.dtype)
        self._bias_copies: list[tuple[torch.Tensor, Projection]] = []
        if not merged:
            self.w, self._bias_copies = _with_bias_copies(self.w, self.dtype)
        self.use_graph = graph and self.device.type == "cuda"
        if self.device.type == "cpu":
            self.check_every = 1  # reading the flag costs nothing without a device to wait for: stop at once
        w, dev = self.w, self.device
        self.merged = [_merged_layer(layer, self.dtype) for layer in w.layers] if merged else None
        self.live = None if merged else _live_groups(w, self.dtype)
        cache_shape = (batch, w.kv_heads, self.length, w.head_dim)  # one tensor per layer, written in place
        self.k_cache = [torch.zeros(cache_shape, dtype=self.dtype, device=dev) for _ in w.layers]
        self.v_cache = [torch.zeros(cache_shape, dtype=self.dtype, device=dev) for _ in w.layers]
        with torch.no_grad():
            positions = torch.arange(self.length, device=dev)[None]
            cos, sin = w.rotary(torch.empty(0, dtype=self.dtype, device=dev), positions)
        if tuple(cos.shape) != (1, self.length, w.head_dim):  # another library's rotary module (a patched model)
            raise UnsupportedModel(f"a rotary embedding that gives cos of shape {tuple(cos.shape)} for positions "
                                   f"(1, {self.length}), not (1, {self.length}, {w.head_dim})")
        self.cos, self.sin = cos[0], sin[0]  # (length, head_dim), in the model's dtype as transformers has them
        self.stop_ids = torch.tensor(sorted(set(stop_token_ids)) or [-1], dtype=torch.long, device=dev)
        # State the token step reads and advances in place (so one captured graph serves every token).
        self.prompt_keys = torch.zeros((batch, self.length), dtype=torch.bool, device=dev)
        self.token = torch.zeros(batch, dtype=torch.long, device=dev)
        self.position = torch.zeros((), dtype=torch.long, device=dev)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.out_tokens = torch.zeros((batch, max_new), dtype=torch.long, device=dev)
        self.out_logprobs = torch.zeros((batch, max_new), dtype=torch.float32, device=dev)
        self._columns = torch.arange(self.length, device=dev)
        self._forward = (torch.compile(self._decode_logits, fullgraph=True, dynamic=False) if compile
                         else self._decode_logits)
        self._graph: torch.cuda.CUDAGraph | None = None

    # -- public -------------------------------------------------------------------------------------------------
    def stale(self) -> bool:
        """True when the model's weights are no longer the tensors this decoder reads (reloaded, re-wrapped, an
        adapter switched): the captured step would read old or freed memory, so a new decoder is needed."""
        try:
            current = read_weights(self.model)
        except UnsupportedModel:
            return True
        return [t.data_ptr() for t in current.tensors()] != self._pointers

    @torch.no_grad()
    def sample(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor,
               max_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and their log-probabilities, (batch, max_new) each; rows are padded after their stop token."""
        if input_ids.shape != (self.batch, self.width) or not 1 <= max_new <= self.max_new:
            raise ValueError(f"this decoder samples {self.batch}x{self.width} prompts up to {self.max_new} tokens, "
                             f"got {tuple(input_ids.shape)} and {max_new}")
        input_ids, prompt_mask = input_ids.to(self.device), prompt_mask.to(self.device).bool()
        self.refresh()
        self.prompt_keys.zero_()
        self.prompt_keys[:, : self.width] = prompt_mask
        self.finished.zero_()
        self.position.fill_(0)
        self.out_logprobs.fill_(math.nan)
        self.out_tokens.fill_(self.pad_token_id)
        logits = self._prefill(input_ids, prompt_mask)
        self.position.fill_(self.width)  # the step after the prompt writes at column `width`
        self._choose(logits)
        if self._graph is None and self.use_graph and max_new > 1:
            self._capture()
        for produced in range(1, max_new):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            if produced % self.check_every == 0 and bool(self.finished.all()):
                break
        return self.out_tokens[:, :max_new], self.out_logprobs[:, :max_new]

    def close(self) -> None:
        """Free the KV cache, the merged copy and the captured graph now. The decoder holds itself through its
        (compiled) step function, so without this its GPU memory would wait for Python's cycle collector while
        a replacement is allocated beside it; a stale decoder read live may also hold the base weights' old
        storage (from before a re-join) until then."""
        self._graph = None
        self._forward = None
        self.merged = self.live = None
        self.k_cache, self.v_cache, self._casts, self._bias_copies = [], [], [], []

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-merge the adapter into the merged copy, refresh the copies made for the compute dtype and of 4-bit
        layers' biases (a no-op for a model read live in one dtype)."""
        for copy, source in self._casts:
            copy.copy_(source)
        for copy, proj in self._bias_copies:
            copy.copy_(proj.current_bias())
        for merged in self.merged or ():
            for weight, bias, source in merged.sources:
                merge_into(weight, bias, source)
        for groups in self.live or ():
            for group in groups:
                group.refresh()

    # -- the model ----------------------------------------------------------------------------------------------
    def _attention_inputs(self, x: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor):
        w, layer = self.w, self.w.layers[index]
        batch, seq = x.shape[:2]
        h = _rms_norm(x, layer.input_norm, w.eps)
        if self.merged is not None:
            q, k, v = self.merged[index].qkv(h).split([w.heads * w.head_dim, w.kv_heads * w.head_dim,
                                                       w.kv_heads * w.head_dim], dim=-1)
        else:
            q, k, v = self.live[index][0](h)
        q = q.reshape(batch, seq, w.heads, w.head_dim).transpose(1, 2)
        k = k.reshape(batch, seq, w.kv_heads, w.head_dim).transpose(1, 2)
        v = v.reshape(batch, seq, w.kv_heads, w.head_dim).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _finish_layer(self, x: torch.Tensor, attended: torch.Tensor, index: int) -> torch.Tensor:
        layer = self.w.layers[index]
        if self.merged is not None:
            merged = self.merged[index]
            x = x + merged.o(attended)
            gate, up = merged.gate_up(_rms_norm(x, layer.post_norm, self.w.eps)).chunk(2, dim=-1)
            return x + merged.down(F.silu(gate) * up)
        _, o, gate_up, down = self.live[index]
        x = x + o(attended)[0]
        gate, up = gate_up(_rms_norm(x, layer.post_norm, self.w.eps))
        return x + down(F.silu(gate) * up)[0]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.lm_head(_rms_norm(x, self.w.norm, self.w.eps)).float()

    def _prefill(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Run the prompts, fill the cache's first `width` columns, return the last position's logits.

        Two shortcuts that leave the result as it was: the leading columns that are padding in every
        row are not computed (no real query attends to them; their cache columns are zeroed and stay
        masked), and a prompt that fills several rows (a GRPO group) is computed once, its keys,
        values and logits copied to the other rows. A round of 2 prompts x 4 completions padded to
        twice their length thus runs 1/8 of the full prefill."""
        w, width = self.w, self.width
        used = prompt_mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        rows, inverse = _distinct_rows(input_ids[:, start:], prompt_mask[:, start:])
        ids, prompt_mask = input_ids[rows, start:], prompt_mask[rows, start:]
        span = width - start
        cos, sin = self.cos[start:width], self.sin[start:width]
        causal = torch.ones((span, span), dtype=torch.bool, device=self.device).tril()
        # Padding queries attend to themselves only, so no row of the softmax is empty.
        mask = (causal & prompt_mask[:, None, :]) | torch.eye(span, dtype=torch.bool, device=self.device)
        x = F.embedding(ids, w.embed)
        for index in range(len(w.layers)):
            q, k, v = self._attention_inputs(x, index, cos, sin)
            for cache, value in ((self.k_cache[index], k), (self.v_cache[index], v)):
                cache[:, :, :start] = 0
                cache[:, :, start:width] = value if inverse is None else value[inverse]
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=w.head_dim ** -0.5,
                                                      enable_gqa=w.heads != w.kv_heads)
            x = self._finish_layer(x, attended.transpose(1, 2).reshape(*x.shape[:2], -1), index)
        logits = self._logits(x[:, -1])
        return logits if inverse is None else logits[inverse]

    def _decode_logits(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits for one new token per row at column `position`, writing its keys and values to the cache."""
        w = self.w
        batch = token.shape[0]
        group = w.heads // w.kv_heads
        cos, sin = self.cos.index_select(0, position.view(1)), self.sin.index_select(0, position.view(1))
        keys_seen = self.prompt_keys | ((self._columns >= self.width) & (self._columns <= position))
        bias = torch.zeros(keys_seen.shape, dtype=torch.float32, device=token.device).masked_fill(~keys_seen, -math.inf)
        x = F.embedding(token[:, None], w.embed)
        for index in range(len(w.layers)):
            q, k, v = self._attention_inputs(x, index, cos, sin)
            self.k_cache[index].index_copy_(2, position.view(1), k)
            self.v_cache[index].index_copy_(2, position.view(1), v)
            q = q.reshape(batch, w.kv_heads, group, w.head_dim)
            scores = torch.matmul(q, self.k_cache[index].transpose(-1, -2)).float() * w.head_dim ** -0.5
            probs = torch.softmax(scores + bias[:, None, None, :], dim=-1).to(self.dtype)
            attended = torch.matmul(probs, self.v_cache[index]).reshape(batch, 1, -1)
            x = self._finish_layer(x, attended, index)
        return self._logits(x[:, 0])

    # -- sampling -----------------------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> None:
        """Sample each row's next token from softmax(logits / T) (top-p filtered), record it, advance the state.
        At temperature 0 the token is the argmax of the logits instead, its logprob at temperature 1."""
        if self.temperature == 0:
            logprobs = torch.log_softmax(logits, dim=-1)
            choice = logits.argmax(dim=-1)
        else:
            choice, logprobs = self._sample(logits)
        chosen_logprob = logprobs.gather(-1, choice[:, None]).squeeze(-1)
        column = (self.position - self.width).clamp(min=0).view(1)
        choice = torch.where(self.finished, torch.full_like(choice, self.pad_token_id), choice)
        chosen_logprob = torch.where(self.finished, torch.full_like(chosen_logprob, math.nan), chosen_logprob)
        self.out_tokens.index_copy_(1, column, choice[:, None])
        self.out_logprobs.index_copy_(1, column, chosen_logprob[:, None])
        self.finished |= torch.isin(choice, self.stop_ids)
        self.token.copy_(choice)

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's token drawn from softmax(logits / T) after the top-p cut, and log_softmax(logits / T)."""
        logprobs = torch.log_softmax(logits / self.temperature, dim=-1)
        probs = logprobs.exp()
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p  # keep the smallest prefix reaching top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        if probs.device.type == "cpu":
            # Inverse CDF, one uniform draw per row: the race below draws one exponential per vocabulary entry,
            # 3 ms a token for 4 rows of a 49k vocabulary on a CPU core, 20x this. right=True never lands on a
            # zero-probability (top-p cut) entry: its cumulative sum equals the previous one.
            cumulative = probs.double().cumsum(dim=-1)
            draw = torch.rand((probs.shape[0], 1), dtype=torch.float64) * cumulative[:, -1:]
            choice = torch.searchsorted(cumulative, draw, right=True).squeeze(1)
            return choice.clamp(max=probs.shape[-1] - 1), logprobs
        # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) picks i with probability p_i / sum(p).
        return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1), logprobs

    def _step(self) -> None:
        """One token: the model at the current position, then sampling; the position moves on by one."""
        logits = self._forward(self.token, self.position)
        self.position += 1  # the sample goes to column position + 1 - width
        self._choose(logits)

    def _capture(self) -> None:
        """Warm the step up on a side stream (compiling it), then capture it as a CUDA graph; state is restored."""
        saved = [t.clone() for t in (self.token, self.position, self.finished, self.out_tokens, self.out_logprobs)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
                self.position.copy_(saved[1])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        for target, value in zip((self.token, self.position, self.finished, self.out_tokens, self.out_logprobs), saved):
            target.copy_(value)
        self._graph = graph
