"""Data: GSM8K-form files and the arithmetic generator become prompts with parsed gold answers."""

import json
import re

import pytest

from grpo_r1.data import arithmetic_problems, load_questions, parse_gold_answer
from grpo_r1.errors import DataError
from grpo_r1.recipe import DataConfig

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A shop sells 1,200 pens a day for 2 days. How many?",
     "answer": "1200*2=<<1200*2=2400>>2400\n#### 2,400"},
]


@pytest.mark.parametrize("solution, gold", [
    ("...\n#### 72", "72"), ("#### 1,000", "1000"), ("#### -5", "-5"), ("#### $18", "18"),
    ("#### 3.5  \n", "3.5"), ("no final answer", None), ("#### seven", None),
])
def test_parse_gold_answer(solution, gold):
    assert parse_gold_answer(solution) == gold


def test_local_jsonl_becomes_prompts_with_gold(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in GSM8K_ROWS))
    cfg = DataConfig(source=str(tmp_path), system_prompt="SYS")
    table = load_questions(cfg, seed=0)
    assert table.column_names == ["prompt", "question", "answer", "solution"]
    assert table["answer"] == ["7", "2400"]
    assert table[0]["prompt"] == [{"role": "system", "content": "SYS"},
                                  {"role": "user", "content": GSM8K_ROWS[0]["question"]}]


def test_custom_column_names_and_no_system_prompt(tmp_path):
    rows = [{"q": r["question"], "sol": r["answer"]} for r in GSM8K_ROWS]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    table = load_questions(DataConfig(source=str(path), question_column="q", answer_column="sol", system_prompt=""),
                           seed=0)
    assert table[1]["prompt"] == [{"role": "user", "content": rows[1]["q"]}]


@pytest.mark.parametrize("rows, expected", [
    ([{"q": "x", "answer": "#### 1"}], "has no column 'question'"),
    ([{"question": "x", "answer": "no marker"}], "must end with '#### <number>'"),
])
def test_bad_files_are_errors(tmp_path, rows, expected):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as info:
        load_questions(DataConfig(source=str(path)), seed=0)
    assert expected in str(info.value)


def test_missing_file_and_split_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_questions(DataConfig(source=str(tmp_path / "nope.jsonl")), seed=0)
    (tmp_path / "train.jsonl").write_text(json.dumps(GSM8K_ROWS[0]))
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_questions(DataConfig(source=str(tmp_path), split="test"), seed=0)


def test_empty_dataset_is_an_error(tmp_path):
    path = tmp_path / "train.parquet"
    import datasets

    datasets.Dataset.from_dict({"question": [], "answer": []}).to_parquet(str(path))
    with pytest.raises(DataError, match="is empty"):
        load_questions(DataConfig(source=str(path)), seed=0)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_questions(DataConfig(source=str(blank)), seed=0)


def test_limit_keeps_a_seeded_subset(tmp_path):
    table = load_questions(DataConfig(source="arithmetic", arithmetic_examples=50, limit=7), seed=3)
    assert len(table) == 7
    assert (table["question"]
            == load_questions(DataConfig(source="arithmetic", arithmetic_examples=50, limit=7), seed=3)["question"])


def test_arithmetic_problems_are_seeded_and_correct():
    first = arithmetic_problems(200, seed=11, max_ops=3)
    assert first["question"] == arithmetic_problems(200, seed=11, max_ops=3)["question"]
    assert first["question"] != arithmetic_problems(200, seed=12, max_ops=3)["question"]
    for solution in first["answer"]:
        # Every calculator annotation is right and the last one is the final answer.
        steps = re.findall(r"<<([^=]+)=(-?\d+)>>", solution)
        for expr, value in steps:
            assert eval(expr.replace("/", "//")) == int(value)  # noqa: S307 (our own arithmetic)
        assert int(parse_gold_answer(solution)) == int(steps[-1][1]) >= 0


def _check_solution(solution: str) -> list[tuple[str, str]]:
    """Every calculator annotation of a generated solution is right and the last one is the final answer."""
    steps = re.findall(r"<<([^=]+)=(-?\d+)>>", solution)
    for expr, value in steps:
        assert eval(expr.replace("/", "//")) == int(value)  # noqa: S307 (our own arithmetic)
        if "/" in expr:
            left, right = expr.split("/")
            assert int(left) % int(right) == 0  # sharing equally never leaves a remainder
    assert int(parse_gold_answer(solution)) == int(steps[-1][1]) >= 0
    return steps


def test_the_harder_generator_chains_two_to_three_operations_with_distractors_and_right_solutions():
    table = arithmetic_problems(300, seed=5, max_ops=3, min_ops=2, distractors=2, wording="varied")
    assert table["question"] == arithmetic_problems(300, seed=5, max_ops=3, min_ops=2, distractors=2,
                                                    wording="varied")["question"]
    with_distractor = packs = 0
    for question, solution in zip(table["question"], table["answer"], strict=True):
        steps = _check_solution(solution)
        assert len(steps) >= 2  # at least two operations, a pack purchase counting two lines
        # A number in the question that no step uses is a distractor (a quantity the answer ignores).
        used = {n for expr, _ in steps for n in re.findall(r"\d+", expr)}
        with_distractor += any(n not in used for n in re.findall(r"\d+", question))
        packs += "packs of" in question
    assert 0.4 < with_distractor / len(table) < 0.95
    assert packs > 30
    assert len({q.split(". ")[1].split()[1] for q in table["question"]}) > 5  # several wordings of the first step


def test_the_plain_generator_is_unchanged_by_the_new_options():
    plain = arithmetic_problems(50, seed=7, max_ops=2)
    assert plain["question"] == arithmetic_problems(50, seed=7, max_ops=2, min_ops=1, distractors=0,
                                                    wording="plain")["question"]
    # The first problem as the generator wrote it before the options existed (docs/results.md's runs).
    assert plain["question"][0] == ("Emma has 4 apples. Emma gets 12 more apples from Maya. Emma gets 30 more apples "
                                    "from Maya. How many apples does Emma have now?")


def test_the_generator_refuses_impossible_settings():
    with pytest.raises(DataError, match="arithmetic_min_ops"):
        arithmetic_problems(5, seed=0, max_ops=2, min_ops=3)
    with pytest.raises(DataError, match="arithmetic_wording"):
        arithmetic_problems(5, seed=0, wording="fancy")


def test_train_and_test_splits_of_the_generator_differ():
    train = load_questions(DataConfig(source="arithmetic", arithmetic_examples=20), seed=0)
    test = load_questions(DataConfig(source="arithmetic", arithmetic_examples=20), seed=0, split="test")
    assert not set(train["question"]) & set(test["question"])
