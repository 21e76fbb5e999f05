"""What a GRPO step computes and moves, against what the device can do (for `python -m grpo_r1.bench`).

The arithmetic, per token the model processes (padding included: a matrix product does not skip it):

    N_body   the matrix weights of the decoder layers, each nn.Linear's in x out, base and LoRA
             (the seven projections of every layer, and the A and B of the active adapter; TRL's
             frozen "ref" copy of the adapter, which the reference forward runs instead, is the
             same size and counted once)
    N_train  of those, the trainable ones (the LoRA A and B matrices)
    N_head   the LM head, vocabulary x hidden; only the positions it is applied to count
             (TRL applies it to the completion positions alone)

    forward (no gradients: the reference and old-policy logprobs)
        2 N_body T_body + 2 N_head T_head
    forward + backward (the loss's pass, with a LoRA on a frozen base)
        forward                          2 N_body T_body + 2 N_head T_head
        gradient of every layer's input  2 N_body T_body + 2 N_head T_head   (the chain rule needs it)
        gradient of the weights          2 N_train T_body                    (the frozen base needs none)
        gradient checkpointing           2 N_body T_body                     (the decoder layers run forward
                                                                              again in the backward; the head is
                                                                              not recomputed)
      = (4 + 2c) N_body T_body + 2 N_train T_body + 4 N_head T_head,   c = 1 with checkpointing, else 0

`T_body` is the tokens entering the decoder (batch x padded width of every forward), `T_head`
the positions the head is applied to; both are counted by hooks on the model during the measured
steps. Left out: attention's own products (4 x width x hidden x layers per token, about 1.5% of
the forward at a 300-token width), the embedding lookup, norms and other elementwise work. The
"model" rate leaves out the recomputation (c = 0): the work the step needs, not what it executed.

Decoding reads the weights once per decode step (one token for every row of the round):

    bytes per decode step = every nn.Linear weight of the layers and the head, as stored
                            (a merged decoder: the base's shape in the compute dtype, the LoRA
                            folded in; read live: the base as stored plus the LoRA matrices)
    decode bytes/s        = bytes per decode step x decode steps / generation seconds

with the decode steps of a round taken as its longest completion. Left out: the KV cache (at
48 rows of about 330 positions it adds about a tenth), the prompt's prefill (compute-bound) and
the host's work, all inside the generation seconds, so the figure is a lower bound on the
bandwidth used. The ceilings are measured on the device at the start (`measure_device_peaks`):
a bf16 matrix product on random data (fp32 on a CPU model) and a device-to-device copy,
counting bytes read plus bytes written.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from grpo_r1.trainer import trl_private

FLOP_FORMULA = ("fwd+bwd = (4 + 2c) N_body T_body + 2 N_train T_body + 4 N_head T_head (c = 1 with gradient "
                "checkpointing); forward = 2 N_body T_body + 2 N_head T_head; T = tokens processed, padding included; "
                "attention's own products not counted")
DECODE_FORMULA = "weight bytes per decode step x longest completion / generation s (KV cache and prefill not counted)"


@dataclass(frozen=True)
class ModelCounts:
    """The matrix sizes the FLOP and byte counts need (see the module doc)."""

    body_params: int  # N_body: decoder layers' nn.Linear weights, base and LoRA
    trainable_params: int  # N_train: of those, the trainable (LoRA) ones
    head_params: int  # N_head: the LM head
    decode_weight_bytes: int  # bytes one decode step reads: the layers' and the head's weights


def count_model(model: Any, *, merged: bool, compute_dtype: torch.dtype) -> ModelCounts:
    """Count `model`'s matrices (a PeftModel or a plain causal LM).

    `merged`: the decoder samples from a merged copy in `compute_dtype` (hf-compiled with
    generation.merged_weights), so a decode step reads the base's shape in that dtype and no LoRA.
    """
    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    body = _backbone(causal_lm)
    active = _active_adapters(model)
    body_params = trainable = decode_bytes = 0
    for name, module in body.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        lora_part = re.search(r"(?:^|\.)lora_[A-Za-z]+\.([^.]+)$", name)
        if lora_part is not None and active is not None and lora_part.group(1) not in active:
            continue  # another adapter (TRL's frozen "ref" copy): a forward runs one adapter, the same size
        size = module.in_features * module.out_features
        body_params += size
        is_lora = lora_part is not None
        if module.weight.requires_grad:
            trainable += size
        if merged:
            decode_bytes += 0 if is_lora else size * _itemsize(compute_dtype)
        else:
            decode_bytes += module.weight.numel() * module.weight.element_size()  # as stored (4-bit: packed)
    head_params = head.in_features * head.out_features if isinstance(head, torch.nn.Linear) else 0
    if head_params:
        decode_bytes += head.weight.numel() * head.weight.element_size()
    return ModelCounts(body_params, trainable, head_params, decode_bytes)


def train_flops(counts: ModelCounts, body_tokens: int, head_tokens: int, *, checkpointing: bool) -> float:
    """FLOPs of the loss's forward + backward over `body_tokens` decoder and `head_tokens` head positions."""
    recompute = 2 if checkpointing else 0
    return ((4 + recompute) * counts.body_params * body_tokens + 2 * counts.trainable_params * body_tokens
            + 4 * counts.head_params * head_tokens)


def forward_flops(counts: ModelCounts, body_tokens: int, head_tokens: int) -> float:
    """FLOPs of forwards without gradients (the reference's and old policy's logprobs)."""
    return 2 * counts.body_params * body_tokens + 2 * counts.head_params * head_tokens


def decode_bytes(counts: ModelCounts, decode_steps: int) -> float:
    """Weight bytes read by `decode_steps` decode steps (one token for every row each)."""
    return float(counts.decode_weight_bytes) * decode_steps


def rate(amount: float, seconds: float) -> float | None:
    """`amount` per second, or None when nothing was timed."""
    return amount / seconds if seconds > 0 and amount > 0 else None


def measure_device_peaks(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time a square matrix product and a device-to-device copy on `device`: the two ceilings.

    On a GPU: 8192 x 8192 x 8192 in `dtype` (bf16 for the bench recipes) and a 1 GiB copy; on a
    CPU: 1024 cubed and a 128 MiB copy. Random data (zeros run faster than real data); the median
    of several timed runs after warm-up. Copy bandwidth counts bytes read plus bytes written.
    """
    cuda = device.type == "cuda"
    n, copy_bytes, reps = (8192, 2**30, 10) if cuda else (1024, 2**27, 5)
    if not (cuda or dtype in (torch.float32, torch.float64)):
        dtype = torch.float32  # bf16 products on a CPU time the emulation, not the machine
    matmul_s = _time_matmul(n, device, dtype, reps, cuda)
    copy_s = _time_copy(copy_bytes, device, reps, cuda)
    if cuda:
        torch.cuda.empty_cache()
    return {"matmul_tflops": 2 * n**3 / matmul_s / 1e12, "matmul_shape": f"{n}x{n}x{n}",
            "matmul_dtype": str(dtype).removeprefix("torch."), "copy_gb_s": 2 * copy_bytes / copy_s / 1e9,
            "copy_bytes": copy_bytes}


def _time_matmul(n: int, device: torch.device, dtype: torch.dtype, reps: int, cuda: bool) -> float:
    """Median seconds of one n x n x n product on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return _median_seconds(lambda: torch.matmul(a, b, out=out), reps, cuda)


def _time_copy(nbytes: int, device: torch.device, reps: int, cuda: bool) -> float:
    """Median seconds of copying `nbytes` of random float32 to another buffer on the same device."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return _median_seconds(lambda: dst.copy_(src), reps, cuda)


def _median_seconds(work: Any, reps: int, cuda: bool) -> float:
    """Median seconds of `work()` over `reps` runs after 3 warm-up runs (CUDA events on a GPU)."""
    for _ in range(3):
        work()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


class TokenCounter:
    """Counts the tokens the model's forwards process, by phase, with hooks on the decoder and the head.

    A forward inside TRL's logprob phase with gradients is the loss's ("train"); without, the
    reference's or old policy's ("score"). Forwards while sampling (TRL's own generate) are not
    counted. `take()` returns the counts since the last call and starts again.
    """

    def __init__(self, model: Any) -> None:
        causal_lm = _causal_lm(model)
        self._phase: str | None = None
        self._handles = [_backbone(causal_lm).register_forward_pre_hook(self._body, with_kwargs=True)]
        head = causal_lm.get_output_embeddings()
        if head is not None:
            self._handles.append(head.register_forward_pre_hook(self._head))
        self._counts = self._zero()

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {"train_body": 0, "train_head": 0, "score_body": 0, "score_head": 0, "train_widths": set()}

    def watch(self, trainer: Any) -> TokenCounter:
        """Follow `trainer`'s phases (call once, after the trainer is built)."""
        trl_private.watch_phases(trainer, self)
        return self

    def phase_started(self, phase: str, grad: bool) -> None:
        if phase == "logprobs":
            self._phase = "train" if grad else "score"

    def phase_ended(self, phase: str, grad: bool) -> None:
        if phase == "logprobs":
            self._phase = None

    def _body(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._phase is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if isinstance(ids, torch.Tensor) and ids.dim() >= 2:
            self._counts[f"{self._phase}_body"] += int(ids.shape[0] * ids.shape[1])
            if self._phase == "train":
                self._counts["train_widths"].add(int(ids.shape[1]))

    def _head(self, module: Any, args: tuple[Any, ...]) -> None:
        if self._phase is not None and args and isinstance(args[0], torch.Tensor):
            hidden = args[0]
            self._counts[f"{self._phase}_head"] += hidden.numel() // hidden.shape[-1]

    def take(self) -> dict[str, Any]:
        """The counts since the last call: tokens per phase, and the training forwards' padded widths."""
        counts, self._counts = self._counts, self._zero()
        counts["train_widths"] = sorted(counts["train_widths"])
        return counts

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _active_adapters(model: Any) -> set[str] | None:
    """The names of a PeftModel's active adapters (None for a plain model: count every LoRA layer)."""
    if not hasattr(model, "peft_config"):
        return None
    names = getattr(model, "active_adapters", None)  # a property of PeftModel
    if isinstance(names, str):
        return {names}
    return set(names) if isinstance(names, (list, tuple, set)) else None


def _causal_lm(model: Any) -> Any:
    """The causal LM inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _backbone(causal_lm: Any) -> Any:
    """The decoder stack of a causal LM (Qwen2Model inside Qwen2ForCausalLM), as TRL's forward calls it."""
    backbone = getattr(causal_lm, "base_model", None)
    return backbone if isinstance(backbone, torch.nn.Module) and backbone is not causal_lm else causal_lm


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
