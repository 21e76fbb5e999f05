"""The hf-compiled engine on the real SmolLM2 model (on a CPU it runs uncompiled: same code path
for batching, padding, stopping and log-probabilities)."""

import pytest
import torch

from grpo_r1.engines import build_engine, engine_settings
from grpo_r1.engines.base import SamplingSettings
from grpo_r1.engines.hf_compiled import CompiledHFEngine
from grpo_r1.model import load_model
from grpo_r1.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def loaded():
    return load_model(recipe_from_dict({}))


def _prompt_ids(tokenizer, text):
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


def _model_logprobs(model, prompt, completion, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)


def test_groups_follow_counts_and_logprobs_match_the_trainers_forward(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    recipe = recipe_from_dict({"generation": {"engine": "hf-compiled", "max_completion_length": 12,
                                              "temperature": 0.7}})
    engine = build_engine(engine_settings(recipe), model, tokenizer)
    assert isinstance(engine, CompiledHFEngine) and not engine.compile  # no CUDA graphs on a CPU
    assert engine.sync(model, 0) and not engine.sync(model, 0)
    prompts = [_prompt_ids(tokenizer, "What is 2+3?"), _prompt_ids(tokenizer, "Name one colour, in one word.")]
    torch.manual_seed(0)
    groups = engine.generate(prompts, [3, 2])
    assert [len(g) for g in groups] == [3, 2]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for prompt, group in zip(prompts, groups):
        for completion in group:
            assert 1 <= len(completion.token_ids) <= 12
            if completion.finish_reason == "stop":
                assert completion.token_ids[-1] == eos and eos not in completion.token_ids[:-1]
            else:
                assert completion.finish_reason == "length" and len(completion.token_ids) == 12
            expected = _model_logprobs(model, prompt, completion.token_ids, 0.7)
            assert torch.allclose(torch.tensor(completion.logprobs), expected,
                                  atol=1e-4), (completion.logprobs, expected)
    assert any(c.finish_reason == "stop" for g in groups for c in g)  # left padding did not stop the short answers


def test_padded_width_only_grows_so_shapes_stay_the_same(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    sampling = SamplingSettings(max_completion_length=2, max_seq_length=1024, stop_token_ids=(2,))
    engine = CompiledHFEngine(model, tokenizer, sampling, pad_multiple=16)
    engine.sync(model, 0)
    long_prompt = _prompt_ids(tokenizer, "Count the apples: " + "one apple, " * 10)
    engine.generate([long_prompt], [2])
    width = engine._width
    assert width % 16 == 0 and width >= len(long_prompt)
    engine.generate([_prompt_ids(tokenizer, "Hi")], [2])
    assert engine._width == width


def test_the_recipe_engine_pads_to_the_datasets_longest_prompt_from_the_first_round(loaded):
    from datasets import Dataset

    from grpo_r1.engines import engine_from_recipe

    model, tokenizer = loaded.model, loaded.tokenizer
    questions = ["Hi", "Count the apples: " + "one apple, " * 40, "What is 2+3?"]
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})
    recipe = recipe_from_dict({"generation": {"engine": "hf-compiled", "max_completion_length": 2}})
    engine = engine_from_recipe(recipe, loaded, dataset=dataset)
    engine.sync(model, 0)
    longest = _prompt_ids(tokenizer, questions[1])
    engine.generate([_prompt_ids(tokenizer, "Hi")], [2])
    decoder = engine._decoder
    assert decoder is not None and engine._width >= len(longest)
    engine.generate([longest], [2])  # the longest prompt arrives later: same shapes, no new decoder (no new compile)
    assert engine._decoder is decoder


def test_the_model_is_back_in_training_mode_afterwards(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    sampling = SamplingSettings(max_completion_length=2, max_seq_length=1024, stop_token_ids=(2,))
    engine = CompiledHFEngine(model, tokenizer, sampling)
    engine.sync(model, 0)
    model.train()
    engine.generate([_prompt_ids(tokenizer, "Hi")], [1])
    assert model.training


def test_padding_does_not_eat_into_the_completion_budget(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = _prompt_ids(tokenizer, "Hi")
    sampling = SamplingSettings(max_completion_length=3, stop_token_ids=(), max_seq_length=len(prompt) + 4)
    engine = CompiledHFEngine(model, tokenizer, sampling, pad_multiple=64)  # pads far past max_seq_length
    engine.sync(model, 0)
    (completion,), = engine.generate([prompt], [1])
    assert len(completion.token_ids) == 3 and completion.finish_reason == "length"
