"""Evaluation: metrics worked out by hand on tiny sets, the CLI's refusals, and one real run on SmolLM2."""

from fractions import Fraction
from pathlib import Path

import pytest

from grpo_r1 import evaluate as evaluate_module
from grpo_r1.evaluation import EvalReport, default_output, majority_vote, score_completions, vote_metrics
from tests.helpers import CPU_RECIPE

TAGGED_7 = "<reasoning>\n3+4=7\n</reasoning>\n<answer>\n7\n</answer>"


def test_score_completions_by_hand():
    completions = [
        TAGGED_7,  # right, in the strict layout
        # two numbers in the block: wrong; soft layout; last number 7
        "<reasoning>guess</reasoning> <answer>8 or 7</answer>",
        "Tom has 5, then 7 more, so 12.\nThe answer is 12.",  # right without tags: lenient only
        "I think 5 apples",  # wrong
    ]
    golds = ["7", "7", "12", "6"]
    metrics = score_completions(completions, golds, num_tokens=[10, 20, 30, 40], truncated=[False, False, True, False])
    assert metrics == {
        "accuracy": 1 / 4,
        "lenient_accuracy": 3 / 4,
        "strict_format_rate": 1 / 4,
        "soft_format_rate": 2 / 4,
        "mean_completion_tokens": 25.0,
        "truncation_rate": 1 / 4,
    }


@pytest.mark.parametrize("block, gold, correct", [
    ("72", "72", True), ("72.0", "72", True), ("$1,000", "1000", True), ("72 apples.", "72", True),
    ("-3", "-3", True), ("3 + 69 = 72", "72", True), ("seventy-two", "72", False), ("71", "72", False),
        ("The answer to 17 - 15 is 3", "2", False),
])
def test_accuracy_reads_the_answer_as_gsm8k_correctness_does(block, gold, correct):
    metrics = score_completions([f"<answer>{block}</answer>"], [gold])
    assert metrics["accuracy"] == (1.0 if correct else 0.0)
    assert "mean_completion_tokens" not in metrics  # only with token counts


def test_score_completions_needs_one_gold_per_completion():
    with pytest.raises(ValueError, match="one gold per completion"):
        score_completions(["a", "b"], ["1"])
    with pytest.raises(ValueError):
        score_completions([], [])


@pytest.mark.parametrize("answers, expected", [
    ([Fraction(7), Fraction(7), Fraction(8)], Fraction(7)),
    ([None, None, Fraction(8)], Fraction(8)),  # no answer abstains
    ([Fraction(8), Fraction(7), Fraction(7), Fraction(8)], Fraction(8)),  # a tie goes to the first seen
    ([None, None], None),
    ([], None),
    ([Fraction(3, 2), Fraction(3, 2), Fraction(2)], Fraction(3, 2)),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_vote_metrics_by_hand():
    samples = [
        # gold 7: answer blocks 7, 8 and none (tie 7-8: 7 came first, right); last numbers 7, 8, 7
        ["<answer>7</answer>", "<answer>8</answer>", "so it is 7"],
        # gold 3: answer blocks 4, 4, 3 (vote 4, wrong); last numbers the same
        ["<answer>4</answer>", "<answer>4</answer>", "<answer>3</answer>"],
    ]
    metrics = vote_metrics(samples, ["7", "3"])
    assert metrics["maj@3"] == 0.5
    assert metrics["lenient_maj@3"] == 0.5
    assert metrics["sampled_accuracy"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert metrics["lenient_sampled_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_report_table_puts_models_side_by_side():
    report = EvalReport(settings={}, metrics={
        "base": {"accuracy": 0.25, "lenient_accuracy": 0.5, "mean_completion_tokens": 31.25, "maj@4": 0.5},
        "adapter": {"accuracy": 0.75, "lenient_accuracy": 1.0, "mean_completion_tokens": 20.0, "maj@4": 1.0},
    })
    lines = report.table().splitlines()
    assert lines[0].split() == ["metric", "base", "adapter"]
    assert lines[1].split()[-2:] == ["0.250", "0.750"] and lines[1].startswith("accuracy (greedy pass@1)")
    assert lines[3].split()[-2:] == ["31.2", "20.0"]
    assert lines[4].split() == ["maj@4", "0.500", "1.000"]
    assert len(lines) == 5, "each metric once, however many models share it"


def _fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_eval_json_goes_into_the_run_folder(tmp_path):
    run = tmp_path / "run"
    _fake_adapter(run / "adapter")
    assert default_output(run, None) == run / "eval.json"
    assert default_output(run / "adapter", None) == run / "eval.json"
    assert default_output(run, tmp_path / "x.json") == tmp_path / "x.json"
    assert default_output(None, None) == Path("eval.json")
    loose = _fake_adapter(tmp_path / "loose_adapter")
    assert default_output(loose, None) == loose / "eval.json"


@pytest.mark.parametrize("args, expected", [
    (["--adapter", "/no/such/run"], "adapter '/no/such/run' does not exist"),
    (["lora.rank=8"], "unknown key 'lora.rank'"),
    (["data.source=/no/such/file.jsonl"], "does not exist"),
])
def test_bad_input_is_one_line_before_any_model_loads(monkeypatch, capsys, args, expected):
    monkeypatch.setattr("grpo_r1.evaluation.load_for_generation", lambda *a, **k: pytest.fail("a model was loaded"))
    code = evaluate_module.main([str(CPU_RECIPE), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1


def test_a_folder_without_an_adapter_is_refused(capsys, tmp_path):
    assert evaluate_module.main([str(CPU_RECIPE), "--adapter", str(tmp_path)]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err


def test_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_module.main([str(CPU_RECIPE), "--limit", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


