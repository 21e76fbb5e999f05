"""The cold start: R1-format targets from reference solutions, prompt masking, and real supervised steps."""


import pytest

from grpo_r1.data import load_questions
from grpo_r1.errors import DataError, RecipeError
from grpo_r1.prompts import r1_target
from grpo_r1.recipe import ColdStartConfig, DataConfig, recipe_from_dict
from grpo_r1.trainer.cold_start import run_cold_start, tokenize_example
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


def test_tokenized_example_masks_the_prompt_and_ends_with_the_end_of_turn(smollm2_loaded):
    tokenizer = smollm2_loaded.tokenizer
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    ids, labels = tokenize_example(tokenizer, prompt, "<answer>\n5\n</answer>")
    prompt_len = len(tokenizer(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[prompt_len:-1]) == "<answer>\n5\n</answer>"


def test_cold_start_refuses_data_without_solutions(smollm2_loaded, tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]], "answer": ["1"]})
    with pytest.raises(DataError, match="cold_start.steps=0"):
        run_cold_start(smollm2_loaded.model, smollm2_loaded.tokenizer, table, ColdStartConfig(steps=1), seed=0,
                       run_dir=tmp_path)


@pytest.mark.parametrize("section", [{"steps": -1}, {"batch_size": 0}, {"learning_rate": 0}, {"examples": 0}])
def test_recipe_refuses_bad_cold_start_settings(section):
    with pytest.raises(RecipeError, match="cold_start"):
        recipe_from_dict({"cold_start": section})


def test_cold_start_is_refused_where_the_trainer_shards_the_model_and_runs_under_ddp():
    from grpo_r1.launch import Launch, check_launch

    recipe = recipe_from_dict({"cold_start": {"steps": 4}})
    with pytest.raises(RecipeError, match="cold_start.steps=0"):
        check_launch(recipe, Launch(2, 0, 0, "fsdp", fsdp_version=2))
    check_launch(recipe, Launch(world_size=2, rank=0))  # DDP: each process holds the whole model
