"""Plug an engine into TRL 1.14.2's GRPOTrainer through its `rollout_func` hook (the rollout adapter).

What TRL passes and expects (trl/trainer/grpo_trainer.py, `_generate`):
  * `rollout_func(prompts, trainer)` gets the generation batch of this process, one entry
    per completion to produce: RepeatSampler already repeated each dataset row
    `num_generations` times (consecutively). TRL's docstring calls this "no duplication":
    it adds none of its own. So the function returns exactly one completion per entry,
    in the same order; rewards, advantages (grouped by num_generations) and the
    `extra_fields` merge all index the output by entry.
  * it returns {"prompt_ids", "completion_ids", "logprobs"}: lists of token-id lists and,
    per completion, one float per completion token (the sampled token's logprob).

Here identical prompts are grouped, so each goes to the engine once with n = its count
(vLLM shares the prompt's prefill among the n samples), and the completions are put back
in the entries' order.

TRL uses the returned logprobs only where `trainer.use_vllm` is set: the importance-sampling
correction (`vllm_importance_sampling_correction`, on by default) and the metrics
`sampling/sampling_logp_difference/{mean,max}` (|trainer logprob - engine logprob| over
completion tokens) and `sampling/importance_sampling_ratio/*`. With use_vllm=False at
construction (as it must be: True makes TRL start its own vLLM), they are silently dropped.
So on its first call the rollout function turns them on: it sets `trainer.use_vllm = True`
and puts a small hook in `trainer.vllm_generation` whose `sync_weights()` hands the adapter
to the engine (TRL calls it when global_step changes, timed as `sync_weights`). TRL reads
`use_vllm` nowhere else on this path (no tools, no environments; checked in 1.14.2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from grpo_r1.engines.base import Engine
from grpo_r1.errors import EngineError
from grpo_r1.prompts import tokenize_prompts
from grpo_r1.trainer import trl_private

logger = logging.getLogger(__name__)

RolloutFunc = Callable[[list, Any], dict[str, list]]


def make_rollout_func(engine: Engine | None, *, logprob_check: bool = True) -> RolloutFunc | None:
    """TRL's `rollout_func` that samples with `engine`; None (TRL's own generate) for no engine.

    `logprob_check`: turn on TRL's engine-vs-trainer logprob comparison (the metric and the
    importance-sampling correction); see the module doc. It costs one extra forward pass of
    the batch per generation round.
    """
    if engine is None:
        return None
    return EngineRollout(engine, logprob_check=logprob_check)


class EngineRollout:
    """The callable `make_rollout_func` returns; `engine` is public for tests and logging."""

    def __init__(self, engine: Engine, *, logprob_check: bool = True) -> None:
        self.engine = engine
        self.logprob_check = logprob_check
        self._attached_to: Any = None

    def __call__(self, prompts: list, trainer: Any) -> dict[str, list]:
        if self._attached_to is not trainer:
            self._attach(trainer)
        self.sync(trainer)
        unique, groups = group_prompts(prompts)
        unique_ids = tokenize_prompts(trainer.processing_class, unique, chat_template=trainer.chat_template,
                                      chat_template_kwargs=trainer.chat_template_kwargs)
        counts = [len(rows) for rows in groups]
        results = self.engine.generate(unique_ids, counts)
        prompt_ids: list[list[int]] = [[] for _ in prompts]
        completion_ids: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        for ids, rows, completions in zip(unique_ids, groups, results, strict=True):
            for row, completion in zip(rows, completions, strict=True):
                prompt_ids[row] = list(ids)
                completion_ids[row] = completion.token_ids
                logprobs[row] = completion.logprobs
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    def sync(self, trainer: Any) -> bool:
        """Hand the trainer's adapter to the engine if the optimizer stepped since the last time."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        return self.engine.sync(model, trainer.state.global_step)

    def _attach(self, trainer: Any) -> None:
        if trl_private.started_trl_vllm(trainer, _SyncHook):
            raise EngineError(
                f"GRPOConfig.use_vllm is True, so TRL started a vLLM of its own beside the {self.engine.name} "
                f"engine; build GRPOConfig with use_vllm=False (the engine replaces TRL's vLLM)"
            )
        if trl_private.uses_tools(trainer):
            raise EngineError(f"the {self.engine.name} engine does not run tool calls or environments; "
                              "use generation.engine=hf")
        trainer_temperature = float(trainer.temperature)
        if abs(trainer_temperature - self.engine.sampling.temperature) > 1e-6:
            raise EngineError(
                f"GRPOConfig.temperature={trainer_temperature} but the {self.engine.name} engine samples at "
                f"{self.engine.sampling.temperature}; set both from generation.temperature"
            )
        if self.logprob_check and trl_private.wants_importance_sampling(trainer):
            trl_private.use_engine_logprobs(trainer, _SyncHook(self, trainer))
            logger.debug("%s engine: TRL's importance-sampling correction and sampling/sampling_logp_difference "
                        "metrics are on (trainer.use_vllm set after construction)", self.engine.name)
        self._attached_to = trainer


class _SyncHook:
    """Stands in for TRL's VLLMGeneration on the rollout_func path: TRL only calls sync_weights."""

    def __init__(self, rollout: EngineRollout, trainer: Any) -> None:
        self._rollout = rollout
        self._trainer = trainer

    def sync_weights(self) -> None:
        self._rollout.sync(self._trainer)


def group_prompts(prompts: Sequence[Any]) -> tuple[list[Any], list[list[int]]]:
    """Identical prompts, once each in first-seen order, and the entry indices of each."""
    unique: list[Any] = []
    groups: list[list[int]] = []
    where: dict[str, int] = {}
    for row, prompt in enumerate(prompts):
        key = json.dumps(prompt, sort_keys=True, default=repr)
        if key not in where:
            where[key] = len(unique)
            unique.append(prompt)
            groups.append([])
        groups[where[key]].append(row)
    return unique, groups
