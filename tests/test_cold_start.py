"""The cold start: R1-format targets from reference solutions, prompt masking, and real supervised steps."""

import json

import pytest
import torch

from grpo_r1.cold_start import r1_target, run_cold_start, tokenize_example
from grpo_r1.data import load_questions
from grpo_r1.errors import DataError, RecipeError
from grpo_r1.recipe import ColdStartConfig, DataConfig, recipe_from_dict
from rewards.correctness import lenient_correctness
from rewards.format import graded_format, strict_format


def test_r1_target_drops_calculator_notes_and_final_line_and_earns_full_rewards():
    solution = "Ava has 12 apples. After getting 5 more, Ava has 12+5 = <<12+5=17>>17 apples.\n#### 17"
    target = r1_target(solution, "17")
    assert target == ("<reasoning>\nAva has 12 apples. After getting 5 more, Ava has 12+5 = 17 apples.\n</reasoning>\n"
                      "<answer>\n17\n</answer>")
    completion = [[{"role": "assistant", "content": target}]]
    assert strict_format([None], completion) == [0.5]
    assert graded_format([None], completion) == [0.5]
    assert lenient_correctness([None], completion, answer=["17"]) == [2.0]


def test_every_generated_problem_becomes_a_target_the_rewards_pay_in_full():
    rows = load_questions(DataConfig(source="arithmetic", arithmetic_examples=50, arithmetic_max_ops=3), seed=3)
    for row in rows:
        target = r1_target(row["solution"], row["answer"])
        assert "<<" not in target and "####" not in target
        completion = [[{"role": "assistant", "content": target}]]
        assert strict_format([None], completion) == [0.5]
        assert lenient_correctness([None], completion, answer=[row["answer"]]) == [2.0]
    assert len(rows) == 50


@pytest.fixture(scope="module")
def smollm2():
    from grpo_r1.model import load_model

    return load_model(recipe_from_dict({}))


def test_tokenized_example_masks_the_prompt_and_ends_with_the_end_of_turn(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    ids, labels = tokenize_example(tokenizer, prompt, "<answer>\n5\n</answer>")
    prompt_len = len(tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[prompt_len:-1]) == "<answer>\n5\n</answer>"


@pytest.mark.slow
def test_cold_start_lowers_the_loss_trains_only_the_adapter_and_saves_it(smollm2, tmp_path):
    dataset = load_questions(DataConfig(source="arithmetic", arithmetic_examples=40, arithmetic_max_ops=1), seed=0)
    model = smollm2.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad and "layers.0." in n}
    records = run_cold_start(model, smollm2.tokenizer, dataset, ColdStartConfig(steps=6, batch_size=4, examples=4,
                             learning_rate=1e-3), seed=0, run_dir=tmp_path, log=lambda _: None)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]  # the same 4 examples over and over: memorised
    lines = [json.loads(line) for line in (tmp_path / "cold_start" / "metrics.jsonl").read_text().splitlines()]
    assert lines == records
    assert (tmp_path / "cold_start" / "adapter" / "adapter_model.safetensors").is_file()
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_cold_start_refuses_data_without_solutions(smollm2, tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]], "answer": ["1"]})
    with pytest.raises(DataError, match="cold_start.steps=0"):
        run_cold_start(smollm2.model, smollm2.tokenizer, table, ColdStartConfig(steps=1), seed=0, run_dir=tmp_path)


@pytest.mark.parametrize("section", [{"steps": -1}, {"batch_size": 0}, {"learning_rate": 0}, {"examples": 0}])
def test_recipe_refuses_bad_cold_start_settings(section):
    with pytest.raises(RecipeError, match="cold_start"):
        recipe_from_dict({"cold_start": section})


def test_cold_start_is_refused_where_the_trainer_shards_the_model_and_runs_under_ddp():
    from grpo_r1.distributed import Launch, check_launch

    recipe = recipe_from_dict({"cold_start": {"steps": 4}})
    with pytest.raises(RecipeError, match="cold_start.steps=0"):
        check_launch(recipe, Launch(2, 0, 0, "fsdp", fsdp_version=2))
    check_launch(recipe, Launch(world_size=2, rank=0))  # DDP: each process holds the whole model


@pytest.mark.slow
def test_processes_that_do_not_write_train_the_same_and_leave_no_files(smollm2, tmp_path):
    dataset = load_questions(DataConfig(source="arithmetic", arithmetic_examples=8, arithmetic_max_ops=1), seed=0)
    records = run_cold_start(smollm2.model, smollm2.tokenizer, dataset, ColdStartConfig(steps=1, batch_size=2),
                             seed=0, run_dir=tmp_path, log=lambda _: pytest.fail("a non-writing process printed"),
                             write_files=False)
    assert len(records) == 1 and not (tmp_path / "cold_start").exists()
