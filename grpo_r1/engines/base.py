"""What every generation engine is: the interface, its sampling settings and its output.

An engine has one job: given token-id prompts and the trainer's current LoRA adapter,
sample completions and report, for every sampled token, its log-probability under the
distribution it was sampled from (the model's logits divided by the temperature).
TRL turns those into the importance-sampling correction and the
`sampling/sampling_logp_difference/*` metrics; see `grpo_r1.trainer.rollout`.

Engines never see chat messages or the trainer: `grpo_r1.trainer.rollout` tokenizes and regroups.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpo_r1.errors import EngineError


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled; the same for every engine.

    `temperature` must equal GRPOConfig.temperature: the trainer divides its logits by it
    before comparing log-probabilities with the engine's. `temperature == 0` means greedy
    decoding (argmax, `top_p` ignored), for evaluation only: the recipe refuses it for training
    (grpo_r1.recipe.checks), since GRPO needs different completions in a group. A greedy
    completion's logprobs are at temperature 1: log_softmax of the raw logits (what vLLM's
    `processed_logprobs` gives for a greedy request too).
    """

    max_completion_length: int
    max_seq_length: int  # prompt + completion, the engine's context size
    temperature: float = 1.0  # plain sampling unless set; 0: greedy (evaluation)
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_completion_length < 1:
            raise EngineError(f"generation.max_completion_length must be at least 1, got {self.max_completion_length}")
        if not self.temperature >= 0:
            raise EngineError(f"generation.temperature must be above 0 to sample (0: greedy, for evaluation), "
                              f"got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EngineError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.max_seq_length <= self.max_completion_length:
            raise EngineError(
                f"model.max_seq_length ({self.max_seq_length}) leaves no room for a prompt before "
                f"generation.max_completion_length ({self.max_completion_length}) tokens; raise max_seq_length"
            )

    @property
    def greedy(self) -> bool:
        """Whether completions are decoded greedily (temperature 0) rather than sampled."""
        return self.temperature == 0

    def max_tokens_for(self, prompt_length: int) -> int:
        """How many tokens a completion of a `prompt_length`-token prompt may have."""
        room = self.max_seq_length - prompt_length
        if room < 1:
            raise EngineError(
                f"a prompt of {prompt_length} tokens does not fit model.max_seq_length={self.max_seq_length}; "
                f"raise model.max_seq_length or shorten the prompts"
            )
        return min(self.max_completion_length, room)


@dataclass
class Completion:
    """One sampled completion: its token ids and each token's sampling log-probability."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None = None  # "stop" (an end token) or "length"

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise EngineError(
                f"the engine returned {len(self.token_ids)} tokens but {len(self.logprobs)} logprobs for one "
                f"completion; this is a bug in the engine"
            )


class Engine(ABC):
    """A generation engine that serves the trainer's LoRA adapter.

    Usage, once per generation round (`grpo_r1.trainer.rollout` does this for TRL):
        engine.sync(peft_model, version=trainer.state.global_step)   # cheap when unchanged
        groups = engine.generate(prompt_ids, counts)                  # counts[i] completions of prompt i

    Evaluation (grpo_r1.evaluation) also samples the base model, adapter left out, with
    `engine.serve_base(model)` (until the next `sync`), and switches between greedy and sampled
    passes with `engine.set_sampling(...)`.
    """

    name: str = "engine"

    def __init__(self, sampling: SamplingSettings) -> None:
        self.sampling = sampling
        self.version: int | None = None  # the adapter version it serves, None before the first sync
        self.adapter_loads = 0  # adapter versions handed to the engine so far
        self._served: tuple[int, int] | None = None  # (id of the model, version) now served
        self._base_only = False  # serve_base was called: sample without the adapter until the next sync

    @property
    def serves_base(self) -> bool:
        """Whether the engine samples the base model now, its adapter left out (see `serve_base`)."""
        return self._base_only

    def is_served(self, model: Any, version: int) -> bool:
        """Whether `model`'s adapter at `version` is the one the engine serves now."""
        return self._served == (id(model), version) and not self._base_only

    def _mark_served(self, model: Any, version: int) -> None:
        self._served = (id(model), version)
        self._base_only = False
        self.version = version
        self.adapter_loads += 1

    def serve_base(self, model: Any) -> None:
        """Sample from `model`'s base weights, its LoRA adapter left out, until the next `sync`.

        For evaluation, which compares the base model with its adapter. Engines that cannot
        raise EngineError.
        """
        raise EngineError(f"the {self.name} engine cannot sample the base model without its adapter; "
                          f"evaluate with generation.engine=hf or vllm")

    def set_sampling(self, sampling: SamplingSettings) -> None:
        """Sample with `sampling` (temperature, top_p, max_completion_length) from the next `generate` on.

        The context size and the stop tokens are fixed when the engine starts: they must stay.
        """
        if (sampling.max_seq_length, sampling.stop_token_ids) != (self.sampling.max_seq_length,
                                                                   self.sampling.stop_token_ids):
            raise EngineError(f"the {self.name} engine was started with max_seq_length={self.sampling.max_seq_length} "
                              f"and stop tokens {list(self.sampling.stop_token_ids)}; build a new engine to change "
                              f"them (asked for {sampling.max_seq_length} and {list(sampling.stop_token_ids)})")
        self.sampling = sampling

    @abstractmethod
    def sync(self, model: Any, version: int) -> bool:
        """Serve `model`'s active LoRA adapter as `version` from now on.

        Does nothing and returns False when this model's `version` is already served (the
        version is the trainer's global_step); returns True when the adapter was handed over.
        """

    @abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int]) -> list[list[Completion]]:
        """Sample `counts[i]` completions of `prompt_ids[i]` with the served adapter."""

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probabilities (temperature 1) of given completions under the served adapter."""
        raise NotImplementedError(f"the {self.name} engine cannot score fixed completions")

    def close(self) -> None:
        """Free what the engine holds (memory, temporary folders). Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every token that ends a completion: the model's declared eos ids and the tokenizer's (as TRL does)."""
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    declared = getattr(generation_config, "eos_token_id", None)
    if isinstance(declared, int):
        ids.append(declared)
    elif declared:
        ids.extend(int(i) for i in declared)
    tokenizer_eos = getattr(tokenizer, "eos_token_id", None)
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.insert(0, int(tokenizer_eos))
    if not ids:
        raise EngineError("neither the model's generation_config nor the tokenizer names an eos token; "
                          "set tokenizer.eos_token so completions can end")
    return tuple(ids)
