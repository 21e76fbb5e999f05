"""`python -m grpo_r1.rewards check`: a table of reward x sample from real dataset rows."""


from grpo_r1.rewards import main
from tests.helpers import CPU_RECIPE


def test_check_prints_every_reward_over_the_samples(capsys):
    seed_rewards = "rewards=[xml_count, soft_format, strict_format, int_answer, gsm8k_correctness]"
    assert main(["check", str(CPU_RECIPE), seed_rewards, "--rows", "2"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("reward"))
    assert header.split() == ["reward", "r0:gold", "r0:wrong", "r0:malformed", "r1:gold", "r1:wrong",
                              "r1:malformed", "mean", "std", "None"]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split() and line.split()[0] in
            ("xml_count", "soft_format", "strict_format", "int_answer", "gsm8k_correctness")}
    assert len(rows) == 5
    # The gold solution in XML earns full correctness; the wrong answer and the untagged one earn none.
    assert rows["gsm8k_correctness"][:3] == ["2.000", "0.000", "0.000"]


def test_check_warns_about_a_constant_reward(capsys, tmp_path):
    (tmp_path / "flat.py").write_text("def flat(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    assert main(["check", str(CPU_RECIPE), f"rewards=[{tmp_path / 'flat.py'}:flat, gsm8k_correctness]"]) == 0
    out = capsys.readouterr().out
    assert "warning: flat is 1 on every sample" in out


def test_check_reports_bad_recipes_as_one_line(capsys):
    assert main(["check", str(CPU_RECIPE), "rewards=[no_such_reward]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_reward" in err


def test_check_shows_none_rates_and_warns_when_a_reward_skips_most_rows(capsys, tmp_path):
    (tmp_path / "picky.py").write_text(
        "def picky(prompts, completions, **kw):\n"
        "    return [1.0] + [None] * (len(completions) - 1)\n"
    )
    assert main(["check", str(CPU_RECIPE), f"rewards=[{tmp_path / 'picky.py'}:picky, gsm8k_correctness]"]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines() if line.split()}
    assert rows["picky"][-1] == "83%" and rows["gsm8k_correctness"][-1] == "0%"
    assert "warning: picky returned None (cannot judge) for 5 of 6 completions" in captured.out
    assert "picky" not in captured.err  # said once, in the table


def test_help_describes_the_command_and_its_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "--rows" in out and "--generate N" in out and "overrides" in out


def test_an_unknown_command_names_the_one_there_is(capsys):
    assert main(["chek", str(CPU_RECIPE)]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'chek'" in err and "check" in err and "--help" in err


def test_generate_prints_the_sampled_texts_under_the_table(capsys):
    assert main(["check", str(CPU_RECIPE), "--rows", "1", "--generate", "2",
                 "generation.max_completion_length=12"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("reward"))
    assert "r0:gen0" in header.split() and "r0:gen1" in header.split()
    _, texts = out.split("sampled completions (the base model, at the recipe's temperature):\n")
    lines = texts.splitlines()
    assert lines[0] == "r0:gen0:" and "r0:gen1:" in lines
    body = lines[1:lines.index("r0:gen1:")]
    assert body and all(line.startswith("    ") for line in body)
    assert all(line.strip() for line in body)  # the model wrote something (or "(empty)")
