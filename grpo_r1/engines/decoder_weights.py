"""The static decoder's view of a Llama-family model (Llama, Qwen2): the trainer's own tensors, read in place.

`read_weights` walks a transformers causal LM, PEFT-wrapped or not, and returns its embedding, norms, lm_head
and each layer's seven projections as `Projection`s: a plain or bitsandbytes 4-bit base weight, with the
active LoRA adapter's A and B beside it, unmerged. Nothing is copied, so an optimizer step shows in the next
round. A model it cannot compute (another architecture, DoRA, several active adapters, a 4-bit weight
repacked for bitsandbytes' CPU kernel, bitsandbytes before 0.50) raises `UnsupportedModel`, and the engine
falls back to transformers' generate. `in_dtype` and `with_bias_copies` make the few copies a decoder
computing in one dtype needs: a 4-bit model's float32 tables, and its biases, which bitsandbytes recasts in
its forward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from packaging.version import Version

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
            return linear(x, self.weight, self.bias)
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
    """One decoder layer's tensors: its two norms' weights and seven projections."""

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


INPUT_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))  # a Layer's projections by the input they read


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


# A decode step on a CPU multiplies a few rows by each weight. torch 2.13's CPU matmul (an AMD EPYC
# with AVX-512) is much faster at that as W @ x.T with at most 4 columns than as F.linear(x, W): one
# round of 4 completions x 96 tokens of SmolLM2-135M took 4.47 s this way and 8.23 s through F.linear
# (docs/benchmarks.md, "CPU: README command 1 end to end"). So few rows go in blocks of 4 that way.
FEW_ROWS = 16  # at most this many rows (a decode step's batch) take the blocked path on a CPU


ROW_BLOCK = 4


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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


def _is_quantized(w: Weights) -> bool:
    return any(p.quant_state is not None for layer in w.layers for p in layer.projections())


def decode_dtype(w: Weights) -> torch.dtype:
    """The dtype the decoder computes in: the model's (its embedding's), or a 4-bit model's compute dtype
    (QLoRA's preparation may have left its embedding and norms in float32)."""
    return w.layers[0].q.dtype if _is_quantized(w) else w.embed.dtype


def cast_sources(w: Weights, dtype: torch.dtype) -> list[torch.Tensor]:
    """The embedding, norm and lm_head tensors not already in `dtype`, each once (a tied lm_head is the embedding)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in (w.embed, w.norm, w.lm_head.weight, w.lm_head.bias,
                   *(norm for layer in w.layers for norm in (layer.input_norm, layer.post_norm))):
        if tensor is not None and tensor.dtype != dtype:
            seen.setdefault(tensor.data_ptr(), tensor)
    return list(seen.values())


def in_dtype(w: Weights, dtype: torch.dtype) -> tuple[Weights, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`w` with the embedding, norms and lm_head in `dtype`, and the (copy, source) pairs that made it.

    QLoRA's preparation (PEFT's prepare_model_for_kbit_training) keeps these in float32 beside the
    bf16 compute dtype of the 4-bit weights; the decoder computes in one dtype, so it reads copies
    (refreshed every round, as a trained embedding would change). A tensor already in `dtype` is
    read in place; a tied embedding and lm_head share one copy."""
    sources = cast_sources(w, dtype)
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


def live_4bit_biased(w: Weights) -> list[Projection]:
    """The 4-bit projections that have a bias (Qwen2's q, k and v)."""
    return [p for layer in w.layers for p in layer.projections()
            if p.quant_state is not None and p.module.bias is not None]


def with_bias_copies(w: Weights, dtype: torch.dtype) -> tuple[Weights, list[tuple[torch.Tensor, Projection]]]:
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
