"""The reward table behind `python -m grpo_r1.rewards check`, and the sample completions it scores."""

from types import SimpleNamespace

import pytest

from grpo_r1.errors import DataError, RewardError
from grpo_r1.prompts import solution_steps
from grpo_r1.recipe import RewardSpec
from grpo_r1.scoring import format_reward_table, load_reward_functions, reward_table, sample_completions
from rewards import BUILTIN_REWARDS, SEED_REWARDS

ROW = {
    "prompt": [{"role": "system", "content": "Respond in the format..."}, {"role": "user", "content": "Natalia..."}],
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "72",
    "solution": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
STATE = SimpleNamespace(global_step=0, max_steps=10, epoch=0.0)


def table(names, samples, trainer_state=STATE):
    funcs = load_reward_functions([RewardSpec(name=n) for n in names], ROW)
    count = len(samples)
    completions = [[{"role": "assistant", "content": text}] for text in samples.values()]
    columns = {key: [value] * count for key, value in ROW.items()}
    return reward_table(funcs, [ROW["prompt"]] * count, completions, columns, trainer_state=trainer_state)


def test_solution_steps_drops_calculator_notes_and_the_final_line():
    assert solution_steps(ROW["solution"]) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )


def test_sample_completions():
    samples = sample_completions(ROW)
    assert list(samples) == ["gold", "wrong", "malformed"]
    assert samples["gold"].startswith("<reasoning>\nNatalia sold 48/2 = 24 clips in May.\n")
    # the R1 layout, as the cold start trains it
    assert samples["gold"].endswith("\n</reasoning>\n<answer>\n72\n</answer>")
    assert "<answer>\n73\n</answer>" in samples["wrong"]
    assert "<" not in samples["malformed"] and samples["malformed"].endswith("The answer is 72.")


def test_sample_completions_needs_solution_and_answer():
    with pytest.raises(DataError, match=r"needs the row's 'solution', but it has only 'question', 'answer'"):
        sample_completions({"question": "q", "answer": "1"})


def test_table_of_the_seed_rewards_on_the_samples():
    rows = table(SEED_REWARDS, sample_completions(ROW))
    values = {row.name: row.values for row in rows}
    assert values == {
        "xml_count": [0.5, 0.5, 0.0],
        "soft_format": [0.5, 0.5, 0.0],
        "strict_format": [0.5, 0.5, 0.0],
        "int_answer": [0.5, 0.5, 0.0],
        "gsm8k_correctness": [2.0, 0.0, 0.0],
    }
    correctness = rows[-1]
    assert correctness.mean == pytest.approx(2 / 3)
    assert correctness.std == pytest.approx(1.1547, abs=1e-4)  # sample std, as TRL logs it
    assert correctness.none_rate == 0.0 and correctness.warning is None


def test_partial_credit_rewards_pay_the_untagged_answer():
    rows = table(["graded_format", "lenient_correctness"], sample_completions(ROW))
    assert [row.values for row in rows] == [[0.5, 0.5, 0.0], [2.0, 0.0, 1.0]]


def test_constant_and_skipping_rewards_are_flagged():
    samples = {"a": "Natalia sold 72 clips.", "b": "I don't know."}
    rows = table(["strict_format"], samples)
    assert rows[0].warning is not None and "is 0 on every sample" in rows[0].warning
    rows = table(["gsm8k_correctness"], samples)
    assert rows[0].warning is not None  # 0 for both
    skip = reward_table(
        [lambda prompts, completions, **kwargs: [None] * len(completions)],
        ["p", "p"],
        ["a", "b"],
        {},
        trainer_state=STATE,
    )
    assert skip[0].none_rate == 1.0 and skip[0].mean is None
    assert "returned None (cannot judge) for 2 of 2 completions" in skip[0].warning


def test_format_reward_table():
    samples = sample_completions(ROW)
    text = format_reward_table(table(["strict_format", "gsm8k_correctness"], samples), list(samples))
    lines = text.splitlines()
    assert lines[0].split() == ["reward", "gold", "wrong", "malformed", "mean", "std", "None"]
    assert lines[1].split() == ["strict_format", "0.500", "0.500", "0.000", "0.333", "0.289", "0%"]
    assert lines[2].split() == ["gsm8k_correctness", "2.000", "0.000", "0.000", "0.667", "1.155", "0%"]
    assert len(lines) == 3  # no warnings


def test_table_errors_name_the_reward_and_completion():
    def broken(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardError, match=r"reward 'broken' returned 1 values for 2 completions"):
        reward_table([broken], ["p", "p"], ["a", "b"], {}, trainer_state=STATE)
    with pytest.raises(ValueError, match=r"column 'answer' has 1 items for 2 completions"):
        reward_table([broken], ["p", "p"], ["a", "b"], {"answer": ["1"]}, trainer_state=STATE)


def test_every_builtin_runs_with_a_real_trainer_state():
    rows = table(list(BUILTIN_REWARDS), sample_completions(ROW), trainer_state=None)
    assert [row.name for row in rows] == list(BUILTIN_REWARDS)
    assert all(len(row.values) == 3 for row in rows)
