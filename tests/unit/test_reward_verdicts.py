"""What the correctness rewards pay for: the answer a completion commits to, read one way by all three.

Each bug of the rewards issue has a test here that failed before the fix: "The answer to 17 - 15
is 3" paid for gold 2; words were parsed as algebra; ".5" read as 5; strict_format refused
"</answer>" followed by two newlines; GSM8K's raw "... #### 72" gold made every row None.
"""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_r1.errors import RecipeError
from grpo_r1.prompts import r1_target
from grpo_r1.recipe import recipe_from_dict
from grpo_r1.scoring import guard_reward
from rewards.correctness import gsm8k_correctness, lenient_correctness
from rewards.format import strict_format
from rewards.layout import Layout
from rewards.mathverify import math_correctness
from rewards.parsing import committed_answer, find_numbers, gold_number

CORRECTNESS = {"gsm8k_correctness": gsm8k_correctness, "lenient_correctness": lenient_correctness,
               "math_correctness": math_correctness}
PROSE_READERS = {"lenient_correctness": lenient_correctness, "math_correctness": math_correctness}


def score(func, completion: str, gold) -> float | None:
    return func(prompts=[[{"role": "user", "content": "q"}]], completions=[[{"role": "assistant",
                "content": completion}]], answer=[gold])[0]


def block(answer: str) -> str:
    return f"<reasoning>\nLet me work it out.\n</reasoning>\n<answer>\n{answer}\n</answer>"


# --- the committed answer decides ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORRECTNESS)
@pytest.mark.parametrize("stated, gold", [
    ("The answer to 17 - 15 is 3", 2),
    ("The answer to 3 - 8 is 2.", -5),
    ("17 - 15 is 3", 2),
    ("17 - 15 = 3", 2),
    ("$17 - 15$ is $3$", 2),
    ("Since 17 - 15 = 2, I say 3", 2),
])
def test_a_wrong_stated_result_is_not_paid_for_its_expression(name, stated, gold):
    assert score(CORRECTNESS[name], block(stated), str(gold)) == 0.0
    if name in PROSE_READERS:
        assert score(CORRECTNESS[name], stated, str(gold)) == 0.0


@pytest.mark.parametrize("name", CORRECTNESS)
@pytest.mark.parametrize("stated", ["The answer to 17 - 15 is 2", "17 - 15 = 2", "x = 2", "2", "17 - 15",
                                    "The answer is 2.", "\\boxed{2}", "2 apples"])
def test_the_stated_result_or_an_expression_by_value_is_paid(name, stated):
    assert score(CORRECTNESS[name], block(stated), "2") == 2.0


def test_prose_commits_to_the_answer_phrase_or_the_last_box():
    assert committed_answer("The answer to 3 - 8 is 2.") == "2"
    assert committed_answer("First 5, then \\boxed{7}. Final: \\boxed{8}") == "8"
    assert committed_answer("The answer is 72. Check: 70 + 2 = 72.") == "72"
    assert committed_answer("48 + 24 = 72") == "72"
    assert committed_answer("72 is the answer") == "72 is the answer"  # no result follows "is": the whole text
    for name, func in PROSE_READERS.items():
        assert score(func, "The answer to 3 - 8 is 2.", "-5") == 0.0, name
        assert score(func, "The answer to 3 - 8 is -5.", "-5") > 0, name


# --- None means "cannot judge", and only that ------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORRECTNESS)
@pytest.mark.parametrize("answer, gold", [("two forty", "forty two"), ("yes", "sey"), ("forty two", "forty two"),
                                          ("72", "Answer is forty two."), ("72", ""), ("72", "   "), ("72", None)])
def test_golds_in_words_or_empty_are_skipped_never_scored(name, answer, gold):
    assert score(CORRECTNESS[name], block(answer), gold) is None


@pytest.mark.parametrize("name", CORRECTNESS)
def test_word_answers_are_never_algebra(name):
    assert score(CORRECTNESS[name], block("forty two"), "42") == 0.0
    assert score(CORRECTNESS[name], block("x y z"), "42") == 0.0


# --- one reading of numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORRECTNESS)
@pytest.mark.parametrize("written, gold", [
    (".5", "0.5"), ("-.5", "-0.5"), ("0.50", ".5"), ("1,000", "1000"), ("1\u00a0000", "1000"), ("1\u2009000", "1000"),
    ("\u00bd", "0.5"), ("1\u00bd", "1.5"), ("\u22125", "-5"), ("\uff17\uff12", "72"), ("\uff0d3", "-3"),
    ("3/4", "0.75"), ("$1,000.50", "1000.5"),
])
def test_numbers_are_read_the_same_by_every_correctness_reward(name, written, gold):
    assert score(CORRECTNESS[name], block(written), gold) == 2.0


@pytest.mark.parametrize("name", CORRECTNESS)
@pytest.mark.parametrize("written, gold", [(".5", "5"), ("5", "0.5"), ("1 000", "1000"), ("1,5", "1.5"),
                                           ("1e3", "1000"), ("-.5", "0.5")])
def test_numbers_that_differ_are_not_paid(name, written, gold):
    assert score(CORRECTNESS[name], block(written), gold) == 0.0


def test_number_reading_rules():
    assert find_numbers("costs .5 or -.5, 1,000 and 1 000") == [".5", "-.5", "1,000", "1", "000"]
    assert gold_number("\u00bd") == gold_number("0.5") == gold_number("1/2")
    assert gold_number("\u221272") == -72 and gold_number("\uff17\uff12") == 72


# --- GSM8K's raw gold, and the warning when most rows are skipped --------------------------------------------------

RAW_GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize("name", CORRECTNESS)
def test_gsm8ks_raw_answer_column_is_read_as_its_final_answer(name):
    assert score(CORRECTNESS[name], block("72"), RAW_GOLD) == 2.0
    assert score(CORRECTNESS[name], block("73"), RAW_GOLD) == 0.0
    assert score(CORRECTNESS[name], block("72"), "Some solution\n#### 1,000") == 0.0


def test_a_reward_that_skips_most_rows_says_so(caplog):
    guarded = guard_reward(gsm8k_correctness)
    completions = [[{"role": "assistant", "content": block("72")}]] * 4
    with caplog.at_level(logging.WARNING, logger="grpo_r1.scoring.guard"):
        values = guarded(prompts=["q"] * 4, completions=completions, answer=["seventy-two"] * 3 + ["72"])
        guarded(prompts=["q"] * 4, completions=completions, answer=["seventy-two"] * 4)  # not repeated at once
    assert values == [None, None, None, 2.0]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "'gsm8k_correctness' returned None (cannot judge) for 3 of 4 completions" in warnings[0]
    assert "'seventy-two'" in warnings[0] and "data.answer_column" in warnings[0]


def test_a_reward_that_judges_most_rows_is_quiet(caplog):
    guarded = guard_reward(gsm8k_correctness)
    with caplog.at_level(logging.WARNING, logger="grpo_r1.scoring.guard"):
        guarded(prompts=["q"] * 2, completions=[block("72")] * 2, answer=["seventy-two", "72"])
    assert caplog.records == []


# --- the layout -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["", "\n", "\n\n", "  \n"])
def test_strict_format_allows_whitespace_after_the_answer(ending):
    assert strict_format(prompts=[None], completions=[block("72") + ending]) == [0.5]
    assert strict_format(prompts=[None], completions=[block("72") + ending + "Hope this helps"]) == [0.0]


def test_a_recipe_scores_one_layout_and_asks_for_it():
    think = {"name": "strict_format", "kwargs": {"tags": {"reasoning": "think"}}}
    with pytest.raises(RecipeError, match=r"data.system_prompt asks for <answer> <reasoning>, but the rewards score "
                                          r"<think> and <answer>.*Respond in the following format:\\n<think>"):
        recipe_from_dict({"rewards": [think]})
    with pytest.raises(RecipeError, match=r"the built-in rewards score different tags \(rewards\[0\] \(strict_format\) "
                                          r"<think> <answer>; rewards\[1\] \(xml_count\) <reasoning> <answer>\)"):
        recipe_from_dict({"rewards": [think, "xml_count"], "data": {"system_prompt": ""}})
    with pytest.raises(RecipeError, match=r"rewards\[0\] \(strict_format\): tag name '<think>'"):
        recipe_from_dict({"rewards": [{"name": "strict_format", "kwargs": {"tags": {"reasoning": "<think>"}}}]})
    recipe = recipe_from_dict({"rewards": [think, {**think, "name": "gsm8k_correctness"}],
                               "data": {"system_prompt": Layout("think").system_prompt()}})
    assert recipe.layout == Layout("think")
    target = r1_target("48 + 24 = 72.\n#### 72", "72", recipe.layout)
    assert target == "<think>\n48 + 24 = 72.\n</think>\n<answer>\n72\n</answer>"
    assert strict_format(prompts=[None], completions=[target]) == [0.0]  # the default layout's reward refuses it


# --- the property: no correctness reward pays a committed number other than the gold -------------------------------

numbers = st.integers(-10_000, 10_000)


@st.composite
def wrong_final_answers(draw):
    """A gold, and a completion whose committed final number differs from it, in the ways people write one."""
    gold = draw(numbers)
    stated = draw(numbers.filter(lambda n: n != gold))
    a = draw(st.integers(0, 10_000))
    b = a - gold  # a - b == gold: the expression equals the gold, the stated result does not
    expression = f"{a} - {b}" if b >= 0 else f"{a} + {-b}"
    unit = draw(st.sampled_from(["", " apples", " dollars", " km", "%"]))
    phrasing = draw(st.sampled_from([
        f"The answer is {stated}{unit}.",
        f"The answer to {expression} is {stated}.",
        f"{expression} = {stated}{unit}",
        f"So {expression} is {stated}{unit}.",
        f"{stated}{unit}",
        f"\\boxed{{{stated}}}",
        f"The final answer is $\\boxed{{{stated}}}$.",
        f"First I thought {gold}, but the answer is {stated}.",
        f"Answer: {stated:,}",
    ]))
    in_block = draw(st.booleans())
    return str(gold), block(phrasing) if in_block else phrasing, stated


@settings(max_examples=400, deadline=None)
@given(wrong_final_answers())
def test_no_correctness_reward_pays_a_final_number_that_is_not_the_gold(case):
    gold, completion, stated = case
    for name, func in CORRECTNESS.items():
        assert score(func, completion, gold) == 0.0, (name, completion, gold)


@settings(max_examples=200, deadline=None)
@given(numbers, st.sampled_from(["The answer is {n}.", "{n}", "x = {n}", "\\boxed{{{n}}}", "{n:,} apples"]))
def test_every_correctness_reward_pays_the_gold_stated_in_an_answer_block(gold, phrasing):
    completion = block(phrasing.format(n=gold))
    for name, func in CORRECTNESS.items():
        assert score(func, completion, str(gold)) == 2.0, (name, completion)
