"""The preflight: one worst-case GRPO step on the real SmolLM2 model before the run folder exists.

On this CPU it runs the same code as on a GPU. The out-of-memory path is tested by making one
phase raise torch.OutOfMemoryError (the only fake here: there is no GPU to fill).
"""

import dataclasses
import json

import pytest
import torch

from grpo_r1 import train as train_module
from grpo_r1.data import load_questions
from grpo_r1.model import load_model
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.preflight import preflight_step
from tests.helpers import CPU_RECIPE

TINY = ["generation.max_completion_length=16", "generation.num_generations=2", "training.per_device_train_batch_size=2",
        "training.steps_per_generation=2", "data.arithmetic_examples=40", "cold_start.steps=0",
        "logging.report_to=none"]

class RewardRecorder:
    """A reward that pays by position and remembers what it was shown."""

    def __init__(self):
        self.__name__ = "recorder"
        self.prompts, self.lengths = [], []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.prompts += [p[-1]["content"] for p in prompts]
        self.lengths += [len(ids) for ids in completion_ids]
        return [float(i % 2) for i in range(len(completions))]


def _longest_question(dataset, tokenizer) -> tuple[str, int]:
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
               for p in dataset["prompt"]]
    best = max(range(len(lengths)), key=lengths.__getitem__)
    return dataset[best]["question"], lengths[best]


# Questions SmolLM2 answers in 5-12 tokens, so that only the preflight's forcing makes every completion 16 long.
SHORT_ANSWERS = [
    {"question": "What is 2+2? Reply with the number only.", "answer": "#### 4"},
    {"question": "What is 12+30? Reply with the number only, nothing else.", "answer": "#### 42"},
    {"question": "What is 3+5? Reply with the number only.", "answer": "#### 8"},
]


@pytest.fixture(scope="module")
def short_answers(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "short.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in SHORT_ANSWERS))
    overrides = [*TINY, f"data.source={data}", "data.system_prompt=''"]
    recipe = load_recipe(CPU_RECIPE, overrides)
    return overrides, load_model(recipe), load_questions(recipe.data, seed=recipe.run.seed)


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_preflight_runs_the_worst_case_and_leaves_the_model_as_it_was(short_answers, engine):
    overrides, loaded, dataset = short_answers
    recipe = load_recipe(CPU_RECIPE, [*overrides, f"generation.engine={engine}", "rewards=[recorder]"])  # its weight
    model = loaded.model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    was_training = model.training
    reward = RewardRecorder()

    report = preflight_step(recipe, loaded, dataset, [reward], cpu=True)

    question, prompt_tokens = _longest_question(dataset, loaded.tokenizer)
    assert question == SHORT_ANSWERS[1]["question"] and report.worst_case.prompt_tokens == prompt_tokens
    assert reward.prompts == [question] * 4, (
        "every row of the round holds the longest prompt (2 x steps_per_generation=2)")
    assert reward.lengths == [16] * 4, "every completion has generation.max_completion_length tokens"
    assert report.phases == ["generation", "reference forward", "reward functions", "policy forward", "backward"]
    assert report.peak_bytes and report.cap_bytes and report.peak_bytes < report.cap_bytes
    after = model.state_dict()
    assert sorted(after) == sorted(before), "the preflight left an adapter or buffer behind"
    assert all(torch.equal(before[name], after[name]) for name in before), "a weight changed"
    assert sorted(name for name, p in model.named_parameters() if p.requires_grad) == trainable
    assert all(p.grad is None for p in model.parameters()), "gradients were left behind"
    assert model.training == was_training


def _main(monkeypatch, capsys, tmp_path, *overrides):
    run_dir = tmp_path / "run"
    code = train_module.main([str(CPU_RECIPE), *TINY, "run.preflight=true", f"run.output_dir={run_dir}", *overrides])
    return code, capsys.readouterr().err, run_dir


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB. "
                                 "GPU 0 has a total capacity of 23.99 GiB")


def test_out_of_memory_in_generation_names_phase_shape_and_settings(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("trl.GRPOTrainer._generate", _out_of_memory)
    code, err, run_dir = _main(monkeypatch, capsys, tmp_path)
    assert code == 2, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: preflight ran out of memory in the generation phase, at the worst case this "
                              "recipe allows (4 completions per generation round, 2 per forward+backward, each ")
    assert "+16 tokens: the longest prompt and generation.max_completion_length=16)" in message
    assert "(CPU, process RSS); torch: Tried to allocate 3.50 GiB; weights " in message
    assert "KV cache ~" in message and "activations and gradients" in message
    for setting in ("generation.max_completion_length (now 16)", "training.per_device_train_batch_size (now 2",
                    "generation.num_generations (now 2)", "model.gradient_checkpointing=true",
                    "model.load_in_4bit=true"):
        assert setting in message, setting
    assert not run_dir.exists(), "the run folder is made only after the preflight passed"


def test_out_of_memory_in_backward_puts_checkpointing_first_and_keeps_the_old_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("accelerate.Accelerator.backward", _out_of_memory)
    old_run = tmp_path / "run"
    old_run.mkdir()
    (old_run / "recipe.yaml").write_text("kept: true\n")
    code, err, run_dir = _main(monkeypatch, capsys, tmp_path, "--overwrite")
    assert code == 2, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: preflight ran out of memory in the backward phase, at the worst case this recipe "
                              "allows (2 completions in the forward+backward (of 4 per round), each ")
    assert "; to fit, set model.gradient_checkpointing=true, model.load_in_4bit=true, or lower " \
           "training.per_device_train_batch_size (now 2" in message
    assert "KV cache" not in message
    assert (run_dir / "recipe.yaml").read_text() == "kept: true\n", (
        "--overwrite removes the old run only once training can start")


def test_a_reward_that_breaks_on_a_full_length_completion_fails_in_the_preflight(monkeypatch, capsys, tmp_path):
    # Fine on short completions (and on the sample texts checked at load time, which carry no token
    # ids); a ZeroDivisionError once a completion uses the whole budget, as the preflight's all do.
    rewards = tmp_path / "budget_rewards.py"
    rewards.write_text("def budget_left(prompts, completions, completion_ids, **kwargs):\n"
                       "    return [1.0 / (16 - len(ids)) for ids in completion_ids]\n")
    code, err, run_dir = _main(monkeypatch, capsys, tmp_path, f"rewards=[{rewards}:budget_left]")
    assert code == 2, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: reward 'budget_left' raised ZeroDivisionError: float division by zero"), message
    assert message.endswith("(found by the preflight, on completions of the longest prompt with "
                            "generation.max_completion_length=16 tokens)")
    assert not run_dir.exists()


def test_under_mixed_precision_the_preflight_forwards_return_float32_as_a_prepared_model_does(tmp_path):
    # accelerate's prepare_model (bf16 or fp16) converts the forward's outputs to float32, a float32 copy of
    # the logits; the preflight's trainer is never prepared, so it must do the same or measure too little
    # (a CPU run refuses model.dtype=bfloat16, so the float32 load is cast, as a GPU would load it)
    recipe = load_recipe(CPU_RECIPE, [*TINY, "rewards=[recorder]"])
    loaded = dataclasses.replace(load_model(recipe), dtype=torch.bfloat16)
    loaded.model.to(torch.bfloat16)
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    model = loaded.model
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(output.logits.dtype))
    try:
        preflight_step(recipe, loaded, dataset, [RewardRecorder()], cpu=True)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}, seen  # the reference and policy forwards, as in a real run
    assert "forward" not in vars(model), "the preflight left its forward wrapper on the model"
    ids = loaded.tokenizer("2+2=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
