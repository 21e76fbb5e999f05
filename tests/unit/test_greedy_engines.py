"""Greedy decoding (temperature 0) in the engines, and sampling the base model beside its adapter:
what evaluation needs from hf-compiled and vllm (grpo_r1.evaluation). Tiny Qwen2 models on the CPU;
the real SmolLM2 through `python -m grpo_r1.evaluate` is in tests/train/test_evaluate_engines.py."""

import dataclasses

import pytest
import torch

from grpo_r1.engines.base import SamplingSettings
from grpo_r1.engines.hf_compiled import CompiledHFEngine
from grpo_r1.engines.vllm_io import vllm_requests
from grpo_r1.errors import EngineError, RecipeError
from grpo_r1.evaluation import balanced_rounds, evaluation_engine
from grpo_r1.recipe import recipe_from_dict
from tests.unit.test_static_decoder import _decoder, _left_pad, _prompts, _tiny_qwen2, _Tokenizer

GREEDY = SamplingSettings(max_completion_length=6, max_seq_length=128, temperature=0.0)


def _greedy_reference(model, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy decoding by the plain forward of one unpadded sequence: each token the argmax of the
    logits, with its temperature-1 log-probability."""
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([prompt + tokens])).logits[0, -1].float()
            token = int(logits.argmax())
            tokens.append(token)
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
    return tokens, logprobs


def test_temperature_zero_is_greedy_for_the_engines_but_still_refused_for_training():
    assert GREEDY.greedy and not dataclasses.replace(GREEDY, temperature=0.7).greedy
    with pytest.raises(EngineError, match="temperature must be above 0 to sample"):
        SamplingSettings(max_completion_length=8, max_seq_length=64, temperature=-0.5)
    with pytest.raises(RecipeError, match="generation.temperature' must be above 0"):
        recipe_from_dict({"generation": {"temperature": 0}})


@pytest.mark.parametrize("merged", [False, True], ids=["live-lora", "merged-copy"])
def test_the_static_decoder_at_temperature_zero_takes_the_argmax_of_the_forward(merged):
    model = _tiny_qwen2()
    prompts = _prompts([5, 11, 16])
    decoder = _decoder(model, 3, 16, 8, temperature=0.0, stop_token_ids=[], merged=merged)
    torch.manual_seed(0)
    tokens, logprobs = decoder.sample(*_left_pad(prompts, 16), 8)
    torch.manual_seed(1)  # greedy: another seed changes nothing
    again, _ = decoder.sample(*_left_pad(prompts, 16), 8)
    assert torch.equal(tokens, again)
    for prompt, row_tokens, row_logprobs in zip(prompts, tokens, logprobs):
        expected_tokens, expected_logprobs = _greedy_reference(model, prompt, 8)
        assert row_tokens.tolist() == expected_tokens
        assert torch.allclose(row_logprobs, torch.tensor(expected_logprobs), atol=1e-5)


def test_the_generate_fallback_at_temperature_zero_is_greedy_too():
    model = _tiny_qwen2()
    prompts = _prompts([5, 9])
    fallback = CompiledHFEngine(model, _Tokenizer(), GREEDY, pad_multiple=8, decoder="generate")
    groups = fallback.generate(prompts, [1, 1])
    assert not fallback.uses_static_decoder
    for prompt, (completion,) in zip(prompts, groups):
        expected_tokens, expected_logprobs = _greedy_reference(model, prompt, 6)
        assert completion.token_ids == expected_tokens
        assert torch.allclose(torch.tensor(completion.logprobs), torch.tensor(expected_logprobs), atol=1e-5)


@pytest.mark.parametrize("merged", [False, True], ids=["live-lora", "merged-copy"])
def test_serve_base_samples_the_model_without_its_adapter_until_the_next_sync(merged):
    model = _tiny_qwen2()  # its LoRA B is non-zero: the adapter changes the answers
    prompts = _prompts([6, 10])
    engine = CompiledHFEngine(model, _Tokenizer(), GREEDY, pad_multiple=8, merged=merged)
    with model.disable_adapter():
        base_expected = [_greedy_reference(model, p, 6)[0] for p in prompts]
    adapter_expected = [_greedy_reference(model, p, 6)[0] for p in prompts]
    assert base_expected != adapter_expected

    def answers():
        return [group[0].token_ids for group in engine.generate(prompts, [1, 1])]

    engine.sync(model, 0)
    assert answers() == adapter_expected
    adapter_decoder = engine._decoder
    engine.serve_base(model)
    assert engine.serves_base and answers() == base_expected
    assert engine._decoder is not adapter_decoder  # rebuilt: it reads the base weights alone
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and not any(m.disable_adapters for m in lora_layers)  # the adapter is back on
    assert engine.sync(model, 0) and not engine.serves_base  # the same version, served again
    assert answers() == adapter_expected


def test_set_sampling_switches_the_decoder_between_greedy_and_sampled():
    model = _tiny_qwen2()
    prompt = _prompts([6])[0]
    engine = CompiledHFEngine(model, _Tokenizer(), GREEDY, pad_multiple=8)
    engine.sync(model, 0)
    greedy = engine.generate([prompt], [4])[0]
    assert len({tuple(c.token_ids) for c in greedy}) == 1
    engine.set_sampling(dataclasses.replace(GREEDY, temperature=5.0))
    torch.manual_seed(0)
    sampled = engine.generate([prompt], [4])[0]
    assert engine._decoder.temperature == 5.0
    assert len({tuple(c.token_ids) for c in sampled}) > 1
    with pytest.raises(EngineError, match="build a new engine"):
        engine.set_sampling(dataclasses.replace(GREEDY, max_seq_length=256))


def test_vllm_requests_at_temperature_zero_ask_for_one_greedy_completion():
    params, inputs = vllm_requests("vllm", True, GREEDY, dict, [[5, 6, 7]], [1])
    assert params[0]["temperature"] == 0.0 and params[0]["n"] == 1
    assert inputs == [{"prompt_token_ids": [5, 6, 7]}]
    with pytest.raises(EngineError, match="one completion per prompt"):
        vllm_requests("vllm", True, GREEDY, dict, [[5, 6, 7]], [2])


def test_rounds_are_balanced_so_a_compiled_engine_sees_one_shape():
    assert balanced_rounds(10, 4) == (4, [range(0, 4), range(4, 8), range(8, 10)])
    size, rounds = balanced_rounds(1319, 256)
    assert size == 220 and len(rounds) == 6 and sum(len(r) for r in rounds) == 1319
    assert balanced_rounds(3, 256) == (3, [range(0, 3)])


def test_the_evaluation_engine_is_one_of_the_training_engines():
    assert evaluation_engine("hf-compiled") == "hf-compiled"
    assert evaluation_engine("unsloth") == "vllm"
    with pytest.raises(EngineError, match="one of hf, hf-compiled, vllm, unsloth"):
        evaluation_engine("tgi")
