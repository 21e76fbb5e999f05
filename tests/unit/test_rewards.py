"""The built-in rewards on real-looking completions, the seed's failure cases, and properties."""

import importlib
import re
import subprocess
import sys
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import BUILTIN_REWARDS, SEED_REWARDS
from rewards.correctness import gsm8k_correctness, lenient_correctness
from rewards.format import graded_format, int_answer, soft_format, strict_format, xml_count
from rewards.mathverify import math_correctness
from rewards.parsing import completion_text, extract_answer, find_numbers, single_number

ALL_REWARDS = {
    "xml_count": xml_count,
    "soft_format": soft_format,
    "strict_format": strict_format,
    "int_answer": int_answer,
    "gsm8k_correctness": gsm8k_correctness,
    "graded_format": graded_format,
    "lenient_correctness": lenient_correctness,
    "math_correctness": math_correctness,
}
MAXIMUM = {
    "xml_count": 0.5,
    "soft_format": 0.5,
    "strict_format": 0.5,
    "int_answer": 0.5,
    "gsm8k_correctness": 2.0,
    "graded_format": 0.5,
    "lenient_correctness": 2.0,
    "math_correctness": 2.0,
}
FORMAT_REWARDS = ("xml_count", "soft_format", "strict_format", "int_answer", "graded_format")
CORRECTNESS_REWARDS = ("gsm8k_correctness", "lenient_correctness", "math_correctness")

# A completion as Qwen2.5 writes it when it follows the system prompt: multi-line reasoning, and
# generation stopped right after </answer> (the end-of-sequence token is not in the text).
WELL_FORMED = (
    "<reasoning>\n"
    "Natalia sold 48 clips in April.\n"
    "In May she sold half as many: 48 / 2 = 24.\n"
    "Altogether: 48 + 24 = 72.\n"
    "</reasoning>\n"
    "<answer>\n"
    "72\n"
    "</answer>"
)


def score(func: Any, texts: list[str], answer: str | list[str] = "72", conversational: bool = True) -> list:
    """Call a reward the way GRPOTrainer does: every column and TRL keyword as keyword lists."""
    count = len(texts)
    answers = answer if isinstance(answer, list) else [answer] * count
    if conversational:
        prompts = [[{"role": "user", "content": "How many clips?"}]] * count
        completions: list[Any] = [[{"role": "assistant", "content": text}] for text in texts]
    else:
        prompts, completions = ["How many clips?"] * count, list(texts)
    return func(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2, 3]] * count,
        trainer_state=None,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
        question=["How many clips?"] * count,
        answer=answers,
        solution=["... #### 72"] * count,
    )


def one(func: Any, text: str, answer: str = "72") -> Any:
    return score(func, [text], answer)[0]


# --- the seed's failure cases ----------------------------------------------------------------------

# The seed's patterns, applied the seed's way (re.match, no DOTALL), to show what they miss.
SEED_SOFT = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
SEED_STRICT = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"


def test_seed_format_rewards_fail_on_multiline_reasoning_and_ours_do_not():
    assert re.match(SEED_SOFT, WELL_FORMED) is None
    assert re.match(SEED_STRICT, WELL_FORMED + "\n") is None
    assert one(soft_format, WELL_FORMED) == 0.5
    assert one(strict_format, WELL_FORMED) == 0.5
    assert one(strict_format, WELL_FORMED + "\n") == 0.5
    assert one(xml_count, WELL_FORMED) == 0.5


def test_seed_strict_pattern_only_passes_single_line_reasoning_and_ours_passes_both():
    single_line = "<reasoning>\n48 / 2 = 24, 48 + 24 = 72\n</reasoning>\n<answer>\n72\n</answer>\n"
    assert re.match(SEED_STRICT, single_line) is not None
    assert one(strict_format, single_line) == 0.5
    assert one(soft_format, single_line) == 0.5


def test_multiline_answer_block_scores():
    text = "<reasoning>\nstep 1\nstep 2\n</reasoning>\n<answer>\nShe sold\n72 clips.\n</answer>"
    assert one(soft_format, text) == 0.5
    assert one(strict_format, text) == 0.5
    assert one(gsm8k_correctness, text) == 2.0


# --- format rewards ---------------------------------------------------------------------------------


def test_xml_count_pays_each_tag_in_place():
    assert one(xml_count, WELL_FORMED) == 0.5
    assert one(xml_count, "no tags at all, 72") == 0.0
    assert one(xml_count, "<reasoning>\nthinking") == 0.125
    assert one(xml_count, "<reasoning>\nx\n</reasoning>\n") == 0.25
    # Tags without their newlines are not "in place".
    assert one(xml_count, "<reasoning>x</reasoning><answer>72</answer>") == 0.0


def test_xml_count_charges_text_after_answer_once():
    assert one(xml_count, WELL_FORMED + "\n") == 0.5  # whitespace after </answer> is free
    assert one(xml_count, WELL_FORMED + "\nHope this helps!") == pytest.approx(0.5 - 0.001 * len("Hope this helps!"))
    assert one(xml_count, WELL_FORMED + "x" * 1000) == pytest.approx(-0.5)


def test_xml_count_duplicate_tags_earn_nothing():
    doubled = WELL_FORMED + "\n<answer>\n73\n</answer>"
    assert one(xml_count, doubled) == 0.25  # only the reasoning tags are there once


def test_soft_format():
    assert one(soft_format, "  \n" + WELL_FORMED) == 0.5
    assert one(soft_format, "<reasoning>a</reasoning> <answer>72</answer> and more") == 0.5
    assert one(soft_format, "<answer>72</answer><reasoning>a</reasoning>") == 0.0
    assert one(soft_format, "<reasoning>\nonly reasoning\n</reasoning>") == 0.0
    assert one(soft_format, "Let me think. <reasoning>a</reasoning><answer>72</answer>") == 0.0


@pytest.mark.parametrize(
    "text",
    [
        WELL_FORMED.replace("<reasoning>\n", "<reasoning>"),  # newline after the tag missing
        "Sure!\n" + WELL_FORMED,  # text before
        WELL_FORMED + "\nAnything else?",  # text after
        WELL_FORMED + "\n<answer>\n73\n</answer>",  # two answer blocks
        WELL_FORMED.replace("</reasoning>\n<answer>", "</reasoning>\n\n<answer>"),  # blank line between blocks
    ],
)
def test_strict_format_rejects_layout_errors(text):
    assert one(strict_format, text) == 0.0
    assert one(soft_format, text) in (0.0, 0.5)


@pytest.mark.parametrize(("answer", "expected"), [("72", 0.5), ("-3", 0.5), ("72.0", 0.0), ("$72", 0.0), ("", 0.0)])
def test_int_answer_wants_a_bare_integer(answer, expected):
    assert one(int_answer, f"<reasoning>\nx\n</reasoning>\n<answer>\n{answer}\n</answer>") == expected


def test_int_answer_without_answer_block_is_zero_not_the_seeds_half():
    assert one(int_answer, "72") == 0.0


def test_graded_format_partial_credit():
    assert one(graded_format, "Natalia sold 72 clips.") == 0.0
    assert one(graded_format, "<answer>72</answer>") == 0.25
    assert one(graded_format, "<reasoning>48/2=24") == 0.125
    assert one(graded_format, "<reasoning>a</reasoning><answer>72</answer>") == 0.5
    assert one(graded_format, WELL_FORMED) == 0.5
    # Out of order: </answer> before <answer> earns nothing for </answer>.
    assert one(graded_format, "</answer> 72 <answer>") == 0.125
    # Duplicated tags earn nothing.
    assert one(graded_format, "<answer>1</answer><answer>2</answer>") == 0.0


# --- correctness -----------------------------------------------------------------------------------

CORRECT_VARIANTS = [
    "72",
    "72.0",
    "$72",
    " 72 ",
    "\n72\n",
    "72.",
    "72 clips",
    "72 clips.",
    "$72.00",
    "\\boxed{72}",
    "x = 72",
]
WRONG_VARIANTS = ["73", "720", "7.2", "72 or 73", "", "seventy"]


def block(answer: str) -> str:
    return f"<reasoning>\n48 + 24\n</reasoning>\n<answer>\n{answer}\n</answer>"


@pytest.mark.parametrize("answer", CORRECT_VARIANTS)
@pytest.mark.parametrize("name", CORRECTNESS_REWARDS)
def test_correct_answers_are_not_punished_for_their_formatting(name, answer):
    assert one(ALL_REWARDS[name], block(answer)) == 2.0


@pytest.mark.parametrize("answer", WRONG_VARIANTS)
@pytest.mark.parametrize("name", CORRECTNESS_REWARDS)
def test_wrong_answers_score_zero(name, answer):
    assert one(ALL_REWARDS[name], block(answer)) == 0.0


@pytest.mark.parametrize("name", CORRECTNESS_REWARDS)
def test_thousands_separators_either_side(name):
    func = ALL_REWARDS[name]
    assert one(func, block("1,000"), answer="1000") == 2.0
    assert one(func, block("1000"), answer="1,000") == 2.0
    assert one(func, block("1,000,000"), answer="1000000") == 2.0


@pytest.mark.parametrize("name", CORRECTNESS_REWARDS)
def test_gold_that_is_not_a_number_is_skipped(name):
    assert one(ALL_REWARDS[name], block("72"), answer="") is None


def test_gsm8k_correctness_needs_an_answer_block():
    assert one(gsm8k_correctness, "Natalia sold 72 clips.") == 0.0
    assert one(gsm8k_correctness, "72") == 0.0  # the seed paid 2.0 here
    # A generation cut off inside the answer block still counts, as in the seed.
    assert one(gsm8k_correctness, "<reasoning>\nx\n</reasoning>\n<answer>\n72") == 2.0
    # The last answer block is the one read.
    assert one(gsm8k_correctness, "<answer>5</answer> no wait <answer>72</answer>") == 2.0


def test_an_equation_in_the_answer_commits_to_its_result():
    for name in CORRECTNESS_REWARDS:
        assert one(ALL_REWARDS[name], block("48 + 24 = 72")) == 2.0, name
        assert one(ALL_REWARDS[name], block("48 + 24 = 73")) == 0.0, name
        assert one(ALL_REWARDS[name], block("72 = 48 + 24")) == 2.0, name


def test_lenient_correctness_pays_half_without_tags():
    assert one(lenient_correctness, "48 / 2 = 24 and 48 + 24 = 72, so she sold 72 clips.") == 1.0
    assert one(lenient_correctness, "She sold 72 clips, or maybe 73") == 0.0
    assert one(lenient_correctness, block("72")) == 2.0
    # With an answer block, only the block counts.
    assert one(lenient_correctness, "<answer>73</answer> ... 72") == 0.0


def test_math_correctness_handles_fractions_and_latex():
    for answer in ["1/2", "0.5", "\\frac{1}{2}", "$\\dfrac{1}{2}$", "\\boxed{\\frac{1}{2}}", "2/4"]:
        assert one(math_correctness, block(answer), answer="\\frac{1}{2}") == 2.0, answer
    assert one(math_correctness, block("1/3"), answer="\\frac{1}{2}") == 0.0
    assert one(math_correctness, block("\\sqrt{2}"), answer="\\sqrt{2}") == 2.0  # bare LaTeX gold


def test_math_correctness_reads_the_whole_text_without_a_block():
    assert one(math_correctness, "So the answer is $\\boxed{72}$.") == 2.0
    assert one(math_correctness, "I have no idea.") == 0.0


def test_math_correctness_works_outside_the_main_thread():
    # math-verify's signal-based timeout raises ValueError outside the main thread unless turned off.
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(score(math_correctness, [block("72"), block("7")])))
    thread.start()
    thread.join()
    assert results == [[2.0, 0.0]]


# --- every reward ----------------------------------------------------------------------------------

SAMPLE_TEXTS = [
    WELL_FORMED,
    WELL_FORMED + "\nextra",
    "Natalia sold 72 clips.",
    "<reasoning>\nthinking",
    "",
    block("73"),
]


@pytest.mark.parametrize("name", list(ALL_REWARDS))
def test_conversational_and_plain_completions_score_the_same(name):
    func = ALL_REWARDS[name]
    assert score(func, SAMPLE_TEXTS, conversational=True) == score(func, SAMPLE_TEXTS, conversational=False)


def test_registry_lists_every_builtin_and_the_seed():
    assert set(BUILTIN_REWARDS) == set(ALL_REWARDS)
    assert SEED_REWARDS == ("xml_count", "soft_format", "strict_format", "int_answer", "gsm8k_correctness")
    for name, target in BUILTIN_REWARDS.items():
        module, factory = target.split(":")
        assert ALL_REWARDS[name].__module__ == module and ALL_REWARDS[name].__name__ == name
        assert getattr(importlib.import_module(module), factory)().__name__ == name


def test_seed_rewards_pay_their_published_maximum_on_the_gold_layout():
    values = {name: one(ALL_REWARDS[name], WELL_FORMED) for name in SEED_REWARDS}
    assert values == {
        "xml_count": 0.5,
        "soft_format": 0.5,
        "strict_format": 0.5,
        "int_answer": 0.5,
        "gsm8k_correctness": 2.0,
    }


def test_choosing_a_cheap_reward_does_not_import_math_verify():
    code = (
        "import sys\n"
        "from grpo_r1.recipe import RewardSpec as S\n"
        "from grpo_r1.scoring import load_reward_functions\n"
        "load_reward_functions([S(name='xml_count'), S(name='gsm8k_correctness')], ['prompt', 'answer'])\n"
        "assert 'math_verify' not in sys.modules and 'sympy' not in sys.modules, 'imported too much'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- parsing helpers -------------------------------------------------------------------------------


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert completion_text(blocks) == "a"
    tool_turn = [
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "b"},
    ]
    assert completion_text(tool_turn) == "\nb"
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        completion_text(42)  # type: ignore[arg-type]


def test_extract_answer():
    assert extract_answer("no block") is None
    assert extract_answer("<answer>\n 72 \n</answer>tail") == "72"
    assert extract_answer("<answer>72") == "72"
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "2"


def test_find_numbers():
    assert find_numbers("10-3 = 7, x = -5, 1,000 and 1,0000, $2.50.") == [
        "10",
        "3",
        "7",
        "-5",
        "1,000",
        "1",
        "0000",
        "2.50",
    ]
    assert single_number("It is 72.") == 72
    assert single_number("3/4") is None


# --- properties ------------------------------------------------------------------------------------

FRAGMENTS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "72", "x", "1,000", "$", ".", "-"]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=14).map("".join)
free_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda t: "<" not in t and t.strip() != ""
)


@settings(max_examples=150, deadline=None)
@given(st.lists(texts, min_size=1, max_size=5))
def test_format_rewards_never_exceed_their_maximum_and_give_one_value_each(batch):
    for name in FORMAT_REWARDS:
        for conversational in (True, False):
            values = score(ALL_REWARDS[name], batch, conversational=conversational)
            assert len(values) == len(batch)
            assert all(isinstance(value, float) and value <= MAXIMUM[name] for value in values), (name, values)


@settings(max_examples=100, deadline=None)
@given(st.lists(texts, min_size=1, max_size=5), st.sampled_from(["72", "1000", "0", ""]))
def test_number_correctness_rewards_stay_in_range(batch, gold):
    for name in ("gsm8k_correctness", "lenient_correctness"):
        values = score(ALL_REWARDS[name], batch, answer=gold)
        assert len(values) == len(batch)
        assert all(value in (0.0, 1.0, 2.0) or (value is None and gold == "") for value in values)


@settings(max_examples=60, deadline=None)
@given(free_text, free_text)
def test_well_formed_layout_with_any_multiline_text_gets_full_format_credit(reasoning, answer):
    text = f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
    for name in ("xml_count", "soft_format", "strict_format", "graded_format"):
        assert one(ALL_REWARDS[name], text) == 0.5, name


def written_forms(value: int) -> st.SearchStrategy[str]:
    """Ways people write the number ``value``."""
    plain = str(value)
    grouped = f"{value:,}"
    return st.sampled_from(
        [plain, grouped, f"{plain}.0", f"${grouped}", f"{plain}.", f"{grouped} dollars", f"\\boxed{{{plain}}}"]
    ).flatmap(lambda form: st.sampled_from([form, f"  {form}  ", f"\n{form}\n"]))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**7).flatmap(lambda n: st.tuples(st.just(n), written_forms(n), st.booleans())))
def test_correctness_is_invariant_to_how_the_answer_is_written(case):
    value, written, gold_grouped = case
    gold = f"{value:,}" if gold_grouped else str(value)
    for name in CORRECTNESS_REWARDS:
        func = ALL_REWARDS[name]
        assert one(func, block(written), answer=gold) == 2.0, (name, written, gold)
        assert one(func, block(written), answer=str(value + 1)) == 0.0, (name, written, value + 1)
