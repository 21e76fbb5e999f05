"""The preflight's memory side: the worst-case shape, the meter, what is reserved, and the message an
out-of-memory becomes (the phase, the figures, a breakdown and the settings to lower)."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from grpo_r1.recipe import Recipe

GENERATION = "generation"
REFERENCE = "reference forward"
REWARDS = "reward functions"
POLICY_FORWARD = "policy forward"
BACKWARD = "backward"
SETUP = "setup"


@dataclass
class WorstCase:
    """The largest step the recipe allows."""

    row: int  # the dataset row with the longest prompt
    prompt_tokens: int
    completion_tokens: int  # generation.max_completion_length
    generation_batch: int  # completions sampled in one generation round
    micro_batch: int  # completions in one forward + backward

    def describe(self, phase: str | None = None) -> str:
        """The shape in words; for a training phase, the micro-batch it ran."""
        if phase in (POLICY_FORWARD, BACKWARD):
            rows = f"{self.micro_batch} completions in the forward+backward (of {self.generation_batch} per round)"
        else:
            rows = f"{self.generation_batch} completions per generation round, {self.micro_batch} per forward+backward"
        return (f"{rows}, each {self.prompt_tokens}+{self.completion_tokens} tokens: the longest prompt and "
                f"generation.max_completion_length={self.completion_tokens}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or a RuntimeError that says it ran out of memory (older CUDA paths, bitsandbytes)."""
    return (isinstance(exc, torch.OutOfMemoryError)
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


def oom_message(recipe: Recipe, worst: WorstCase, phase: str, peak: int | None, cap: int | None, memory_kind: str,
                detail: str, breakdown: Sequence[str]) -> str:
    """The one-line PreflightError message for an out-of-memory in `phase`."""
    usage = (f"peak {size_text(peak)} of a {size_text(cap)} cap ({memory_kind})" if peak is not None and cap is not None
             else f"peak unknown ({memory_kind})")
    parts = ", ".join(breakdown)
    return (
        f"preflight ran out of memory in the {phase} phase, at the worst case this recipe allows "
        f"({worst.describe(phase)}): "
        f"{usage}{'; ' + detail if detail else ''}; {parts}; to fit, {settings_to_lower(recipe, phase)}"
    )


def settings_to_lower(recipe: Recipe, phase: str) -> str:
    """The recipe settings that shrink the step, as `section.key` with their values, most relevant first."""
    gen, model = recipe.generation, recipe.model
    training = recipe.training
    lower = [
        f"generation.max_completion_length (now {gen.max_completion_length})",
        (f"training.per_device_train_batch_size (now {training['per_device_train_batch_size']}; raise "
         f"training.gradient_accumulation_steps to keep the batch)"),
        f"generation.num_generations (now {gen.num_generations})",
    ]
    switch = []
    if model.gradient_checkpointing is False:
        switch.append("model.gradient_checkpointing=true")
    if not model.load_in_4bit:
        switch.append("model.load_in_4bit=true")
    if phase in (POLICY_FORWARD, BACKWARD):
        lower.insert(0, lower.pop(1))  # the micro-batch decides the activations
    text = "lower " + ", ".join(lower)
    if switch:
        text = ((f"set {', '.join(switch)}, or " + text) if phase in (POLICY_FORWARD, BACKWARD)
                else text + f", or set {', '.join(switch)}")
    if gen.engine in ("vllm", "unsloth"):
        text += (f"; the {gen.engine} engine holds generation.gpu_memory_utilization={gen.gpu_memory_utilization} of "
                 f"the GPU: lower it to leave the trainer more")
    return text


class Memory:
    """Peak and cap of the memory the step uses: the CUDA allocator's, or the process's RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind = "GPU" if self.cuda else "CPU, process RSS"
        self._available: int | None = None
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            free, _ = torch.cuda.mem_get_info(device)  # less than the total when another allocator (vLLM) holds some
            self._available = int(torch.cuda.memory_reserved(device)) + int(free)

    def peak(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux

    def cap(self) -> int | None:
        if self.cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            return min(int(total * self._current_fraction()), self._available or total)
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None

    def _current_fraction(self) -> float:
        try:
            return float(torch.cuda.get_per_process_memory_fraction(self.device))
        except (AttributeError, RuntimeError):
            return 1.0

    @contextmanager
    def capped(self, engine_share: float) -> Iterator[None]:
        """Leave a generation engine's share of the GPU free while the step runs (a vLLM started later takes it)."""
        if not self.cuda or engine_share <= 0:
            yield
            return
        before = self._current_fraction()
        torch.cuda.set_per_process_memory_fraction(max(0.05, before - engine_share), self.device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(before, self.device)

    def reserve(self, nbytes: int, *, paged: bool) -> Any:
        """Hold `nbytes` on the GPU for the optimizer state (paged optimizers can move theirs to the CPU)."""
        if not self.cuda or paged or nbytes <= 0:
            return None
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def optimizer_state_bytes(model: Any, optim: str) -> int:
    """The optimizer state the first real step allocates: Adam keeps two values per trainable weight."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in trainable)
    nbytes = sum(p.numel() * p.element_size() for p in trainable)
    optim = optim.lower()
    if "8bit" in optim:
        return 2 * numel
    if "adam" in optim:
        return 2 * nbytes
    return nbytes


def _kv_cache_bytes(model: Any, worst: WorstCase, dtype: torch.dtype) -> int | None:
    """Keys and values of every layer for one generation round at the worst case (from the model's config)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    except (AttributeError, TypeError, ValueError):
        return None
    tokens = worst.generation_batch * (worst.prompt_tokens + worst.completion_tokens)
    return 2 * layers * kv_heads * head_dim * tokens * torch.empty(0, dtype=dtype).element_size()


def breakdown(model: Any, worst: WorstCase, dtype: torch.dtype, reserved: int | None, decoder: int | None,
              peak: int | None, generating: bool) -> list[str]:
    """Weights, optimizer state (where reserved), the static decoder's cache and merged weights (hf-compiled),
    KV cache (in generation) and the rest of the peak."""
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    kv = _kv_cache_bytes(model, worst, dtype) if generating else None
    parts = [f"weights {size_text(weights)}"]
    if reserved is not None:
        parts.append(f"optimizer state {size_text(reserved)}")
    if decoder is not None:
        parts.append(f"hf-compiled decoder (KV cache, merged weights) {size_text(decoder)}")
    if kv is not None:
        parts.append(f"KV cache ~{size_text(kv)}")
    if peak is not None:
        rest = peak - weights - (reserved or 0) - (decoder or 0) - (kv or 0)
        parts.append(f"activations and gradients {size_text(max(0, rest))}")
    return parts


def torch_detail(exc: BaseException) -> str:
    """The part of torch's message worth keeping: how much it tried to allocate."""
    text = str(exc)
    found = re.search(r"Tried to allocate [\d.]+ [KMGT]?i?B", text)
    if found:
        return f"torch: {found.group(0)}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"torch: {first[:120]}"


def size_text(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"
