"""The `hf-compiled` engine: fast sampling with transformers' models alone, for machines without vLLM.

TRL's own generation (`generation.engine: hf`) calls `model.generate` with a dynamic KV cache
and compilation turned off, one kernel launch per operation per token: on a GPU, decoding a 3B
model is then bound by Python and launch overhead, not by memory bandwidth. This engine
samples from the very model the trainer trains (no second copy of the weights: read live, only
small copies of the adapter, refreshed every round) and differs in these ways:

  * for Llama-family models (Llama, Qwen2) it runs its own sampling loop
    (`grpo_r1.engines.static_decoder`): a static KV cache and one CUDA graph per token
    (model, sampling, stop check), the model part compiled with torch.compile; the host checks
    for the end only every few tokens; a 4-bit (QLoRA) base through bitsandbytes' 4-bit matmul,
    or with `merged` from a dequantized merged copy. Other models go through transformers'
    `generate` with a static cache and torch.compile ("reduce-overhead"), said once as a warning;
  * prompts are left-padded to a multiple of `pad_multiple` tokens, and never to less than the
    round before, so the shapes (and the compiled graph) stay the same from step to step
    instead of recompiling for each length (a new, longer width compiles once more). Given
    `prompt_width` (the dataset's longest prompt: `engine_from_recipe` passes it), the first
    round already pads to that, so no later round compiles again;
  * every prompt of the generation round goes in one batch (with `counts[i]` copies of prompt
    i), so the weights read for each token serve all of them: decoding is bandwidth-bound, and
    48 sequences cost little more than 6.

Each sequence stops at its first end token (finished rows are padded while the others go on;
the loop ends when all have ended). The log-probability of every sampled token (at the
sampling temperature) is recorded on the way, so TRL's
`sampling/sampling_logp_difference` compares the sampling kernels with the training forward.

At temperature 0 (evaluation) every row is decoded greedily instead, its logprobs at temperature 1.
`serve_base(model)` samples the model with its LoRA adapter disabled, until the next `sync`.

On a CPU there are no CUDA graphs: the engine runs the same code eagerly, which is what the
tests exercise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from grpo_r1.engines.base import Completion, Engine, SamplingSettings
from grpo_r1.engines.decoder_weights import UnsupportedModel
from grpo_r1.engines.static_decoder import StaticDecoder, decoder_memory_bytes
from grpo_r1.errors import EngineError

logger = logging.getLogger(__name__)

PAD_MULTIPLE = 64  # prompts are left-padded to a multiple of this many tokens


def padded_width(prompt_tokens: int, pad_multiple: int = PAD_MULTIPLE) -> int:
    """The width a round's prompts are left-padded to when its longest prompt has `prompt_tokens` tokens."""
    return -(-prompt_tokens // pad_multiple) * pad_multiple


class CompiledHFEngine(Engine):
    """Sample with the trainer's own model: our static-cache CUDA-graph loop, or transformers' compiled generate.

    `decoder`: "auto" uses the static decoder where the model allows it, "static" requires it,
    "generate" always uses transformers' generate. `merged`: the static decoder samples from a
    merged, fused copy of the linear weights (see `grpo_r1.engines.decoder_projections`).
    `prompt_width`: the longest prompt expected, in tokens; every round pads to at least that.
    """

    name = "hf-compiled"

    @staticmethod
    def memory_need(model: Any, *, batch: int, prompt_tokens: int, completion_tokens: int, merged: bool) -> int:
        """GPU bytes the engine keeps between rounds for `batch` sequences of the longest prompt plus
        `completion_tokens`: the static decoder's KV cache at the padded width, and its merged copy."""
        length = padded_width(prompt_tokens) + completion_tokens
        return decoder_memory_bytes(model, batch=batch, length=length, merged=merged)

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingSettings, *, pad_multiple: int = PAD_MULTIPLE,
                 compile: bool | None = None, decoder: str = "auto", merged: bool = False,
                 prompt_width: int = 0) -> None:
        super().__init__(sampling)
        if pad_multiple < 1:
            raise EngineError(f"pad_multiple must be at least 1, got {pad_multiple}")
        if prompt_width < 0:
            raise EngineError(f"prompt_width must be at least 0, got {prompt_width}")
        if decoder not in ("auto", "static", "generate"):
            raise EngineError(f"decoder must be auto, static or generate, got {decoder!r}")
        self.decoder_choice = decoder
        self.merged = merged
        self._decoder: StaticDecoder | None = None
        self.fallback_reason: str | None = None  # why the static decoder is not used, once known
        self.model = model
        self.pad_multiple = pad_multiple
        self.compile = torch.cuda.is_available() if compile is None else compile
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise EngineError("the tokenizer has neither a pad nor an eos token; "
                              "the hf-compiled engine pads prompts with one")
        self.pad_token_id = int(pad)
        self._width = padded_width(prompt_width, pad_multiple)  # the prompt width of the last round; see generate

    def sync(self, model: Any, version: int) -> bool:
        """The engine samples from `model` itself: nothing is copied, only the version is noted."""
        if self.is_served(model, version):
            return False
        self.model = model
        self._mark_served(model, version)
        return True

    def serve_base(self, model: Any) -> None:
        """Sample `model` with its adapter disabled (PEFT's `disable_adapter()` around each round) until the
        next `sync`. The static decoder sees the change (other tensors) and is rebuilt for the base, and
        again for the adapter afterwards. A model without an adapter is its own base."""
        self.model = model
        self._base_only = True

    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int]) -> list[list[Completion]]:
        """`counts[i]` completions of `prompt_ids[i]`, all sampled in one batch."""
        if len(prompt_ids) != len(counts):
            raise EngineError(f"generate got {len(prompt_ids)} prompts but {len(counts)} counts")
        rows = [list(ids) for ids, count in zip(prompt_ids, counts, strict=True) for _ in range(int(count))]
        if not rows:
            return [[] for _ in prompt_ids]
        # The padded width only ever grows: a new width means new shapes and a new compile.
        self._width = max(self._width, padded_width(max(len(r) for r in rows), self.pad_multiple))
        width = self._width
        max_new = self.sampling.max_tokens_for(max(len(r) for r in rows))  # padding does not count
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids):] = 1
        with self._adapter_context():
            decoder = self._static_decoder(len(rows), width)
            if decoder is not None:
                new_tokens, logprobs = decoder.sample(input_ids, attention_mask, max_new)
            else:
                new_tokens, logprobs = self._generate(input_ids, attention_mask, max_new)
        completions = self._cut_at_stop(new_tokens.cpu(), logprobs.cpu())
        groups, start = [], 0
        for count in counts:
            groups.append(completions[start:start + int(count)])
            start += int(count)
        return groups

    def _adapter_context(self) -> contextlib.AbstractContextManager:
        """PEFT's `disable_adapter()` while the base is served (see `serve_base`), else nothing."""
        if self._base_only and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    @property
    def uses_static_decoder(self) -> bool:
        """Whether the last round ran the static decoder (False before the first round)."""
        return self._decoder is not None

    def _static_decoder(self, batch: int, width: int) -> StaticDecoder | None:
        """The decoder for this shape, kept from the last round when nothing changed; None to use generate."""
        if self.decoder_choice == "generate" or self.fallback_reason is not None:
            return None
        old = self._decoder
        sampling = self.sampling
        same_shape = old is not None and (old.batch, old.width, old.max_new) == (
            batch, width, sampling.max_completion_length)
        same_sampling = old is not None and (old.temperature, old.top_p) == (sampling.temperature, sampling.top_p)
        if same_shape and same_sampling and old.model is self.model and not old.stale():
            return old
        self._decoder = None
        if old is not None:
            old.close()  # free the old cache, merged copy and graph before the new ones are made
        try:
            decoder = StaticDecoder(
                self.model, batch=batch, width=width, max_new=self.sampling.max_completion_length,
                temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                stop_token_ids=self.sampling.stop_token_ids, pad_token_id=self.pad_token_id,
                compile=self.compile, graph=self.compile, merged=self.merged,
            )
        except UnsupportedModel as exc:
            if self.decoder_choice == "static":
                raise EngineError(f"the static decoder cannot run this model: {exc}; "
                                  "use decoder='auto' or 'generate'") from exc
            self.fallback_reason = str(exc)
            logger.warning("hf-compiled samples through transformers' generate (slower): the static decoder does "
                           "not support %s", exc)
            return None
        self._decoder = decoder
        return decoder

    def _generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  max_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' generate with a static cache (compiled on a GPU): tokens and logprobs
        (greedy at temperature 0, its logprobs then at temperature 1)."""
        width = input_ids.shape[1]
        device = next(self.model.parameters()).device
        recorder = SampledLogprobs(1.0 if self.sampling.greedy else self.sampling.temperature)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=self._generation_config(max_new),
                    logits_processor=LogitsProcessorList([recorder]),
                )
        finally:
            self.model.train(was_training)
        new_tokens = output[:, width:]
        return new_tokens, recorder.finish(new_tokens)

    def _generation_config(self, max_new_tokens: int) -> Any:
        from transformers import CompileConfig, GenerationConfig

        stop = list(self.sampling.stop_token_ids)
        # transformers' default top_k=50 would sample from a different distribution than the trainer scores
        sampling = ({"do_sample": False} if self.sampling.greedy else
                    {"do_sample": True, "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                     "top_k": 0})
        return GenerationConfig(
            **sampling,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop or None,
            pad_token_id=self.pad_token_id,
            cache_implementation="static",
            compile_config=(CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead") if self.compile
                            else None),
            disable_compile=not self.compile,
        )

    def _cut_at_stop(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> list[Completion]:
        stop = set(self.sampling.stop_token_ids)
        completions = []
        for row_tokens, row_logprobs in zip(tokens.tolist(), logprobs.tolist(), strict=True):
            end = next((i + 1 for i, t in enumerate(row_tokens) if t in stop), None)
            finish = "stop" if end is not None else "length"
            end = end or len(row_tokens)
            completions.append(Completion(row_tokens[:end], [float(x) for x in row_logprobs[:end]], finish))
        return completions


class SampledLogprobs(LogitsProcessor):
    """A logits processor that records the log-probability of each sampled token.

    transformers runs custom processors before its temperature and top-p warpers, so the
    recorder divides by the temperature itself: the value is log_softmax(logits / T), the
    quantity the trainer computes for the same token (top-p is left out on both sides). The
    token only shows up in `input_ids` at the next call, so each call scores the previous
    step's token, and `finish` scores the last one.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self._previous: torch.Tensor | None = None
        self._values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._previous is not None:
            self._values.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self._previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """The (rows, new tokens) log-probabilities; NaN where no distribution was seen."""
        if self._previous is not None and len(self._values) < new_tokens.shape[1]:
            last = new_tokens[:, len(self._values):len(self._values) + 1].to(self._previous.device)
            self._values.append(self._previous.gather(1, last).squeeze(1))
            self._previous = None
        if not self._values:
            return torch.full(new_tokens.shape, math.nan)
        values = torch.stack(self._values, dim=1)
        if values.shape[1] < new_tokens.shape[1]:
            pad = torch.full((values.shape[0], new_tokens.shape[1] - values.shape[1]), math.nan, device=values.device)
            values = torch.cat([values, pad], dim=1)
        return values[:, : new_tokens.shape[1]]
