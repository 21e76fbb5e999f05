"""A sampling loop of our own for Llama-family models (Llama, Qwen2): static KV cache, one CUDA graph per token.

transformers' `generate` with a static cache and torch.compile runs the model's decode step
as a compiled graph, but everything around it (logits processors, stopping criteria, cache
bookkeeping, a host sync every token) stays in Python: on an H100 with the Qwen2.5-3B
architecture that loop cost about 13 ms per token on top of an 8.6 ms step
(docs/benchmarks.md). This module replaces the whole loop:

  * the decoder reads the trainer's own base weights in place and the active adapter live,
    unmerged, so there is no second copy of the model (`grpo_r1.engines.decoder_weights` reads
    them, `grpo_r1.engines.decoder_projections` says how the products are computed: 8 per layer
    read live, 4 from an optional merged copy, `merged=True`);
  * one token step (the model, temperature sampling, the sampled token's log-probability,
    the stop check, the position counter) is captured once as a CUDA graph and replayed, so
    decoding a token is one graph launch; the host looks at the "all finished" flag every
    `check_every` tokens only (on a CPU after every token: reading it waits for nothing);
  * the model part of the step can go through torch.compile first (fused elementwise kernels).

Positions: every row uses positions 0..L-1 of the padded batch, left padding included, as the
trainer's forward does when it gets no position ids; rotary embeddings only see position
differences, so a row's padding changes nothing.

A 4-bit base (QLoRA) is read either way, live through bitsandbytes' 4-bit matmul or from a merged
copy; the step is still one CUDA graph. Anything else the decoder does not compute (other
architectures, DoRA, several active adapters) raises `UnsupportedModel`; the engine then falls
back to transformers' generate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from grpo_r1.engines.decoder_projections import (
    live_groups,
    live_groups_bytes,
    merge_into,
    merged_layer,
    share_frozen_storage,
    shares_storage,
)
from grpo_r1.engines.decoder_weights import (
    Projection,
    UnsupportedModel,
    cast_sources,
    decode_dtype,
    in_dtype,
    live_4bit_biased,
    read_weights,
    with_bias_copies,
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
    dtype = decode_dtype(w)
    size = torch.empty((), dtype=dtype).element_size()
    cache = 2 * len(w.layers) * batch * w.kv_heads * length * w.head_dim * size
    cache += sum(t.numel() for t in cast_sources(w, dtype)) * size  # copies in the compute dtype (4-bit models)
    if not merged:
        biases = sum(p.shape[0] for p in live_4bit_biased(w)) * size  # 4-bit layers' bias copies
        return cache + biases + live_groups_bytes(w, dtype, shares_storage(w, share_storage))
    linear = sum(math.prod(p.shape) for layer in w.layers for p in layer.projections())
    return cache + linear * size


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
        if not merged and shares_storage(read, share_storage) and share_frozen_storage(model):
            read = read_weights(model)
        self.batch, self.width, self.max_new = batch, width, max_new
        self.length = width + max_new
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.pad_token_id, self.check_every = int(pad_token_id), max(1, int(check_every))
        self._pointers = [t.data_ptr() for t in read.tensors()]
        if read.lm_head.quant_state is not None:
            raise UnsupportedModel("a 4-bit lm_head")
        self.device = read.embed.device
        self.dtype = decode_dtype(read)
        self.w, self._casts = in_dtype(read, self.dtype)
        self._bias_copies: list[tuple[torch.Tensor, Projection]] = []
        if not merged:
            self.w, self._bias_copies = with_bias_copies(self.w, self.dtype)
        self.use_graph = graph and self.device.type == "cuda"
        if self.device.type == "cpu":
            self.check_every = 1  # reading the flag costs nothing without a device to wait for: stop at once
        w, dev = self.w, self.device
        self.merged = [merged_layer(layer, self.dtype) for layer in w.layers] if merged else None
        self.live = None if merged else live_groups(w, self.dtype)
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
