"""What the two vLLM engines (`vllm`, `unsloth`) share: vLLM's LoRA ranks, the requests they send
and the completions they read back. Nothing here imports vLLM: its classes are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from grpo_r1.engines.base import Completion, SamplingSettings
from grpo_r1.errors import EngineError

# The LoRA ranks vLLM 0.32 accepts for `max_lora_rank` (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise EngineError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; lora.r={rank} is larger, lower it")


def completions_from_vllm(outputs: Sequence[Any], counts: Sequence[int]) -> list[list[Completion]]:
    """Turn vLLM `RequestOutput`s (one per prompt, `n=counts[i]` samples, logprobs=0) into Completions."""
    if len(outputs) != len(counts):
        raise EngineError(f"vLLM answered {len(outputs)} of {len(counts)} prompts; this is a bug in the engine")
    groups = []
    for request, count in zip(outputs, counts, strict=True):
        samples = list(request.outputs)
        if len(samples) != count:
            raise EngineError(f"vLLM returned {len(samples)} completions where {count} were asked for")
        group = []
        for sample in samples:
            token_ids = [int(t) for t in sample.token_ids]
            if sample.logprobs is None:
                raise EngineError("vLLM returned no logprobs; the engine must ask for logprobs=0")
            logprobs = [_sampled_logprob(position, token)
                        for position, token in zip(sample.logprobs, token_ids, strict=True)]
            group.append(Completion(token_ids, logprobs, getattr(sample, "finish_reason", None)))
        groups.append(group)
    return groups


def _sampled_logprob(position: dict[int, Any], token: int) -> float:
    entry = position.get(token)
    if entry is None:
        return math.nan  # TRL treats NaN as "no correction" for that token
    value = float(entry.logprob)
    return value


def vllm_requests(engine: str, has_adapter: bool, sampling: SamplingSettings, params_cls: Any,
                  prompt_ids: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Check a `generate` call and build vLLM's per-prompt sampling parameters and token inputs.

    `params_cls` is vLLM's SamplingParams (passed in so this module never imports vLLM).
    Each prompt asks for `count` samples; vLLM returns the sampled token's own logprob and no
    text (TRL decodes the ids itself). Temperature 0 is vLLM's greedy decoding (one completion
    per prompt; its logprobs are at temperature 1).
    """
    if not has_adapter:
        raise EngineError(f"the {engine} engine has no adapter yet: call sync(model, version) before generate")
    if len(prompt_ids) != len(counts):
        raise EngineError(f"generate got {len(prompt_ids)} prompts but {len(counts)} counts")
    if sampling.greedy and any(int(count) > 1 for count in counts):
        raise EngineError(f"the {engine} engine decodes greedily (temperature 0), which gives one completion per "
                          f"prompt; ask for counts of 1 or sample with a temperature above 0")
    params = [
        params_cls(
            n=int(count),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens_for(len(ids)),
            stop_token_ids=list(sampling.stop_token_ids),
            logprobs=0,
            detokenize=False,
        )
        for ids, count in zip(prompt_ids, counts, strict=True)
    ]
    inputs = [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompt_ids]
    return params, inputs
