"""Engines behind TRL, with fakes: the rollout adapter, the engine factory, sampling settings, the
Unsloth engine with its vLLM faked, and the step timer (the real vLLM engine: tests/vllm/)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest

from grpo_r1.engines import Completion, Engine, SamplingSettings, build_engine, engine_settings
from grpo_r1.errors import EngineError
from grpo_r1.recipe import recipe_from_dict
from grpo_r1.trainer.rollout import group_prompts, make_rollout_func
from grpo_r1.trainer.timing import StepTimer
from tests.helpers import chat


# ----------------------------------------------------------------------------- fakes
class FakeEngine(Engine):
    """Completion j of prompt i is [1000 + i, j] with logprobs [-0.5, -0.25]."""

    name = "fake"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__(SamplingSettings(max_completion_length=8, temperature=temperature, max_seq_length=64))
        self.calls: list[tuple[list[list[int]], list[int]]] = []
        self.synced: list[int] = []

    def sync(self, model: Any, version: int) -> bool:
        if self.is_served(model, version):
            return False
        self.synced.append(version)
        self._mark_served(model, version)
        return True

    def generate(self, prompt_ids, counts):
        self.calls.append(([list(p) for p in prompt_ids], list(counts)))
        return [[Completion([1000 + i, j], [-0.5, -0.25], "length") for j in range(n)] for i, n in enumerate(counts)]


class FakeTokenizer:
    """Chat prompt -> [index of its text in `texts`, number of messages]."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def _ids(self, conversation: list[dict]) -> list[int]:
        text = "|".join(m["content"] for m in conversation)
        if text not in self.texts:
            self.texts.append(text)
        return [self.texts.index(text), len(conversation)]

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=False, return_dict=False,
                            **kwargs):
        assert add_generation_prompt and tokenize and return_dict
        return {"input_ids": [self._ids(c) for c in conversation]}


def fake_trainer(**overrides: Any) -> SimpleNamespace:
    model = SimpleNamespace(name="policy")
    trainer = SimpleNamespace(
        processing_class=FakeTokenizer(),
        model=model,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        state=SimpleNamespace(global_step=0),
        temperature=1.0,
        use_vllm=False,
        vllm_importance_sampling_correction=True,
        tools=None,
        chat_template=None,
        chat_template_kwargs={},
    )
    for key, value in overrides.items():
        setattr(trainer, key, value)
    return trainer


# ------------------------------------------------------------------ rollout plumbing
def test_group_prompts_keeps_first_seen_order_and_rows():
    unique, groups = group_prompts([chat("a"), chat("a"), chat("b"), chat("b"), chat("a")])
    assert unique == [chat("a"), chat("b")]
    assert groups == [[0, 1, 4], [2, 3]]


def test_rollout_returns_one_completion_per_entry_in_trl_order():
    # TRL's RepeatSampler hands rollout_func each dataset row num_generations times in a row.
    engine = FakeEngine()
    rollout = make_rollout_func(engine)
    trainer = fake_trainer()
    prompts = [chat("x")] * 3 + [chat("y")] * 3
    out = rollout(prompts, trainer)
    assert engine.calls == [([[0, 1], [1, 1]], [3, 3])]  # each prompt once, n = its repeats
    assert out["prompt_ids"] == [[0, 1]] * 3 + [[1, 1]] * 3
    assert out["completion_ids"] == [[1000, 0], [1000, 1], [1000, 2], [1001, 0], [1001, 1], [1001, 2]]
    assert out["logprobs"] == [[-0.5, -0.25]] * 6
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs"}  # no extra fields reach the rewards


def test_rollout_syncs_once_per_global_step_and_turns_on_trl_logprob_check():
    engine = FakeEngine()
    rollout = make_rollout_func(engine)
    trainer = fake_trainer()
    rollout([chat("x")] * 2, trainer)
    assert trainer.use_vllm is True  # TRL now compares logprobs and applies its IS correction
    assert trainer._last_loaded_step == 0
    rollout([chat("x")] * 2, trainer)  # same step (e.g. gradient accumulation): no new adapter
    assert engine.synced == [0]
    trainer.state.global_step = 1
    trainer.vllm_generation.sync_weights()  # what TRL's _generate calls when global_step moved
    rollout([chat("x")] * 2, trainer)
    assert engine.synced == [0, 1]


def test_rollout_without_logprob_check_leaves_trainer_alone():
    trainer = fake_trainer()
    make_rollout_func(FakeEngine(), logprob_check=False)([chat("x")] * 2, trainer)
    assert trainer.use_vllm is False and not hasattr(trainer, "vllm_generation")


def test_hf_engine_means_trl_generation():
    assert build_engine(engine_settings(recipe_from_dict({})), None, None) is None  # the default engine: hf
    assert make_rollout_func(None) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 0.7}, "GRPOConfig.temperature=0.7"),
        ({"use_vllm": True, "vllm_generation": object()}, "use_vllm=False"),
        ({"tools": [print]}, "tool calls"),
    ],
)
def test_rollout_refuses_a_trainer_it_cannot_serve(overrides, message):
    with pytest.raises(EngineError, match=message):
        make_rollout_func(FakeEngine())([chat("x")] * 2, fake_trainer(**overrides))


def test_build_engine_rejects_unknown_kind():
    with pytest.raises(EngineError, match="one of hf, hf-compiled, vllm, unsloth"):
        build_engine(dataclasses.replace(engine_settings(recipe_from_dict({})), engine="tgi"), None, None)


def test_sampling_settings_name_the_fix():
    with pytest.raises(EngineError, match="temperature"):
        SamplingSettings(max_completion_length=8, max_seq_length=64, temperature=-1.0)
    with pytest.raises(EngineError, match="raise max_seq_length"):
        SamplingSettings(max_completion_length=64, max_seq_length=64)
    with pytest.raises(EngineError, match="does not fit model.max_seq_length=64"):
        SamplingSettings(max_completion_length=8, max_seq_length=64).max_tokens_for(64)
    assert SamplingSettings(max_completion_length=8, max_seq_length=64).max_tokens_for(60) == 4


# ------------------------------------------------- unsloth engine, vLLM boundary faked
class FakeVLLM:
    """Stands in for the vllm.LLM that Unsloth attaches as model.vllm_engine."""

    def __init__(self, sleep_mode: bool) -> None:
        self.llm_engine = SimpleNamespace(
            vllm_config=SimpleNamespace(model_config=SimpleNamespace(enable_sleep_mode=sleep_mode)))
        self.events: list[str] = []
        self.requests: list[tuple[list, list, Any]] = []

    def generate(self, prompts, sampling_params=None, lora_request=None, use_tqdm=True):
        self.events.append("generate")
        self.requests.append((prompts, sampling_params, lora_request))
        outputs = []
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True)):
            samples = []
            for j in range(params["n"]):
                tokens = [7, i, j]
                samples.append(SimpleNamespace(token_ids=tokens, finish_reason="stop",
                                               logprobs=[{t: SimpleNamespace(logprob=-0.1 * (k + 1))}
                                                         for k, t in enumerate(tokens)]))
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=samples))
        return outputs

    def wake_up(self, tags=None):
        self.events.append("wake_up")

    def sleep(self, level=1):
        self.events.append(f"sleep{level}")


def fake_unsloth_model(sleep_mode: bool = True) -> SimpleNamespace:
    model = SimpleNamespace(vllm_engine=FakeVLLM(sleep_mode), lora_calls=[])

    def load_lora(save_directory, load_tensors=False, lora_request_id=None):
        model.lora_calls.append((save_directory, load_tensors))
        return SimpleNamespace(lora_int_id=len(model.lora_calls))

    model.load_lora = load_lora
    return model


def test_unsloth_engine_hands_the_live_adapter_to_unsloths_vllm():
    from grpo_r1.engines.unsloth_engine import UnslothEngine

    model = fake_unsloth_model()
    sampling = SamplingSettings(max_completion_length=5, temperature=0.9, top_p=0.95, stop_token_ids=(2,),
                                max_seq_length=16)
    engine = UnslothEngine(model, sampling, sampling_params=dict)
    with pytest.raises(EngineError, match="call sync"):
        engine.generate([[1, 2]], [2])
    assert engine.sync(model, 0) and not engine.sync(model, 0)
    groups = engine.generate([[1, 2, 3], [4] * 13], [2, 1])
    assert len(model.lora_calls) == 1 and model.lora_calls[0][1] is True  # tensors from memory
    prompts, params, lora = model.vllm_engine.requests[0]
    assert lora.lora_int_id == 1
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4] * 13}]
    assert params[0] == dict(n=2, temperature=0.9, top_p=0.95, max_tokens=5, stop_token_ids=[2], logprobs=0,
                             detokenize=False)
    assert params[1]["max_tokens"] == 3  # what is left of max_seq_length after a 13-token prompt
    assert model.vllm_engine.events == ["wake_up", "generate", "sleep1"]
    assert [c.token_ids for c in groups[0]] == [[7, 0, 0], [7, 0, 1]]
    assert groups[1][0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert engine.sync(model, 1) and len(model.lora_calls) == 2
    engine.generate([[1]], [1])
    assert model.vllm_engine.requests[-1][2].lora_int_id == 2  # the new version's request
    engine.close()


def test_unsloth_engine_without_sleep_mode_never_sleeps():
    from grpo_r1.engines.unsloth_engine import UnslothEngine

    model = fake_unsloth_model(sleep_mode=False)
    engine = UnslothEngine(model, SamplingSettings(max_completion_length=2, max_seq_length=8), sampling_params=dict)
    engine.sync(model, 0)
    engine.generate([[1]], [1])
    assert model.vllm_engine.events == ["generate"]


def test_unsloth_engine_needs_fast_inference_model():
    from grpo_r1.engines.unsloth_engine import UnslothEngine

    with pytest.raises(EngineError, match="fast_inference=True"):
        UnslothEngine(SimpleNamespace(), SamplingSettings(max_completion_length=2, max_seq_length=8),
                      sampling_params=dict)


def test_step_timer_splits_a_step():
    """StepTimer on a stand-in trainer: generation inside scoring inside the step."""
    import time

    calls = []

    class Stub:
        _metrics = {"train": __import__("collections").defaultdict(list)}

        def _generate(self, prompts):
            time.sleep(0.02)
            return prompts

        def _calculate_rewards(self, inputs):
            time.sleep(0.01)

        def _get_per_token_logps_and_entropies(self, seconds):
            time.sleep(seconds)

        def _generate_and_score_completions(self, inputs):
            self._generate(inputs)
            self._calculate_rewards(inputs)
            import torch

            with torch.no_grad():  # the reference model's logprobs: timed
                self._get_per_token_logps_and_entropies(0.01)
            self._get_per_token_logps_and_entropies(0.1)  # the loss's forward (with gradients): not timed
            return inputs

        def add_callback(self, callback):
            calls.append(callback)

    trainer = Stub()
    timer = StepTimer().attach(trainer)
    assert calls == [timer] and StepTimer().attach(trainer) is timer  # attaching twice is harmless
    timer.on_step_begin(None, None, None)
    trainer._generate_and_score_completions([1])
    time.sleep(0.03)
    timer.on_pre_optimizer_step(None, None, None)
    time.sleep(0.01)
    timer.on_optimizer_step(None, None, None)
    timer.on_step_end(None, None, None)
    (split,) = timer.history
    assert split["generation_s"] >= 0.02 and split["scoring_s"] >= 0.03 and split["training_s"] >= 0.04
    assert 0.01 <= split["reward_s"] < 0.1 and 0.01 <= split["logprobs_s"] < 0.1  # the graded forward is not counted
    assert 0.01 <= split["optimizer_s"] <= split["training_s"]
    assert math.isclose(split["step_s"], split["generation_s"] + split["scoring_s"] + split["training_s"], rel_tol=1e-9)
    assert trainer._metrics["train"]["timing/generation_s"] == [split["generation_s"]]
