"""Loading rewards from a recipe's names, checking them, and guarding them at training time."""

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from grpo_r1.errors import RewardError
from grpo_r1.recipe import RewardSpec
from grpo_r1.scoring import check_reward_signature, guard_reward, load_reward_functions, reward_name
from rewards import BUILTIN_REWARDS

COLUMNS = ["prompt", "question", "answer", "solution"]
REPO = Path(__file__).resolve().parents[2]


Spec = RewardSpec


def load(*specs: Spec | str, columns: list[str] = COLUMNS, base_dir: Path | None = None) -> list:
    return load_reward_functions([Spec(s) if isinstance(s, str) else s for s in specs], columns, base_dir)


def trl_call(func: Any, texts: list[str]) -> Any:
    """Call a reward as GRPOTrainer does."""
    count = len(texts)
    return func(
        prompts=[[{"role": "user", "content": "q"}]] * count,
        completions=[[{"role": "assistant", "content": text}] for text in texts],
        completion_ids=[[1]] * count,
        trainer_state=None,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
        question=["q"] * count,
        answer=["72"] * count,
        solution=["#### 72"] * count,
    )


@pytest.fixture
def reward_file(tmp_path: Path):
    """Write a reward file and return its path."""

    def write(source: str, name: str = "my_rewards.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


# --- loading what works ----------------------------------------------------------------------------


def test_every_builtin_loads_under_its_own_name():
    funcs = load(*BUILTIN_REWARDS)
    assert [func.__name__ for func in funcs] == list(BUILTIN_REWARDS)
    assert trl_call(funcs[0], ["<reasoning>\nx\n</reasoning>\n<answer>\n72\n</answer>"]) == [0.5]


def test_module_function(tmp_path, monkeypatch):
    (tmp_path / "team_rewards.py").write_text(
        "def brevity(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (func,) = load("team_rewards:brevity")
    assert func.__name__ == "brevity"
    assert trl_call(func, ["a", "b"]) == [1.0, 1.0]


def test_file_relative_to_the_recipe_folder_then_the_cwd(reward_file, tmp_path, monkeypatch):
    reward_file("def short(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    (func,) = load("my_rewards.py:short", base_dir=tmp_path)
    assert func.__name__ == "short"
    monkeypatch.chdir(tmp_path)
    (func,) = load("my_rewards.py:short", base_dir=REPO)
    assert trl_call(func, ["a"]) == [0.0]


def test_example_factory_keeps_a_stable_name_and_gets_its_kwargs():
    spec = Spec("rewards/examples/length_penalty.py:length_penalty", kwargs={"max_chars": 3, "per_char": 0.5})
    (func,) = load(spec, base_dir=REPO)
    assert func.__name__ == "length_penalty"  # not the factory's inner "reward"
    assert trl_call(func, ["abc", "abcdef"]) == [0.0, -1.5]
    (func,) = load(Spec("rewards.examples.length_penalty:length_penalty", kwargs={"max_chars": 5}))
    assert func.__name__ == "length_penalty"


def test_reward_name_is_the_last_part_of_the_spec():
    assert reward_name("xml_count") == "xml_count"
    assert reward_name("pkg.mod:fn") == "fn"
    assert reward_name("C:\\rewards\\mine.py:fn") == "fn"


def test_a_function_naming_every_keyword_needs_no_kwargs():
    def explicit(
        prompts, completions, completion_ids, trainer_state, log_extra, log_metric, question, answer, solution
    ):
        return [0.0] * len(completions)

    check_reward_signature(explicit, "explicit", COLUMNS)


# --- what does not load ----------------------------------------------------------------------------


def test_unknown_builtin_suggests_close_names():
    with pytest.raises(RewardError, match=r"unknown reward 'xmlcount'; did you mean 'xml_count'\?.*Built-in rewards:"):
        load("xmlcount")
    with pytest.raises(RewardError, match=r"separate it with ':': 'my_rewards:brevity'"):
        load("my_rewards.brevity")


def test_missing_module():
    with pytest.raises(RewardError, match=r"reward 'no_such_module:f': no module named 'no_such_module'.*PYTHONPATH"):
        load("no_such_module:f")


def test_module_whose_dependency_is_missing(tmp_path, monkeypatch):
    (tmp_path / "needs_dep.py").write_text("import not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match=r"imports 'not_installed_pkg_xyz', which is not installed.*pip install"):
        load("needs_dep:f")


def test_missing_function_suggests_close_names(reward_file, tmp_path):
    reward_file("def brevity(prompts, completions, **kwargs):\n    return []\n")
    with pytest.raises(RewardError, match=r"has no 'brevty'; did you mean 'brevity'\? It defines: brevity\."):
        load("my_rewards.py:brevty", base_dir=tmp_path)


def test_missing_file_lists_where_it_looked(tmp_path):
    with pytest.raises(RewardError, match=r"file 'nowhere.py' not found \(tried .*nowhere.py, .*nowhere.py\)"):
        load("nowhere.py:f", base_dir=tmp_path)


def test_file_that_fails_to_run(reward_file, tmp_path):
    reward_file("x = 1 / 0\n", name="broken.py")
    with pytest.raises(
        RewardError, match=r"running .*broken.py failed with ZeroDivisionError: division by zero \(at .*broken.py:1"
    ):
        load("broken.py:f", base_dir=tmp_path)
    reward_file("def f(:\n", name="syntax.py")
    with pytest.raises(RewardError, match=r"SyntaxError.*syntax.py:1"):
        load("syntax.py:f", base_dir=tmp_path)


def test_not_callable(reward_file, tmp_path):
    reward_file("SCALE = 2.0\n")
    with pytest.raises(RewardError, match=r"reward 'my_rewards.py:SCALE' is a float, not a function"):
        load("my_rewards.py:SCALE", base_dir=tmp_path)


def test_reward_without_kwargs_would_crash_in_trl(reward_file, tmp_path):
    reward_file("def narrow(prompts, completions):\n    return [0.0] * len(completions)\n")
    with pytest.raises(
        RewardError, match=r"reward 'narrow' does not accept 'completion_ids', .*'question', .*add \*\*kwargs"
    ):
        load("my_rewards.py:narrow", base_dir=tmp_path)


def test_required_parameter_that_is_not_a_column(reward_file, tmp_path):
    reward_file("def needs_gold(prompts, completions, gold, **kwargs):\n    return []\n")
    with pytest.raises(RewardError) as caught:
        load("my_rewards.py:needs_gold", base_dir=tmp_path)
    message = str(caught.value)
    assert "reward 'needs_gold' requires 'gold', which is not a dataset column" in message
    assert "Columns it can read: question, answer, solution" in message


def test_builtin_that_needs_a_missing_column():
    with pytest.raises(
        RewardError, match=r"reward 'gsm8k_correctness' requires 'answer'.*Columns it can read: question"
    ):
        load("gsm8k_correctness", columns=["prompt", "question"])


def test_singular_prompt_parameter_gets_a_hint(reward_file, tmp_path):
    reward_file("def f(prompt, completions, **kwargs):\n    return []\n")
    with pytest.raises(RewardError, match=r"requires 'prompt'.*Did you mean 'prompts'\?"):
        load("my_rewards.py:f", base_dir=tmp_path)


def test_positional_only_parameters_are_refused():
    def positional(prompts, completions, /, **kwargs):
        return []

    with pytest.raises(RewardError, match=r"'prompts' is positional-only"):
        check_reward_signature(positional, "positional", COLUMNS)


def test_duplicate_names_are_refused_before_importing():
    with pytest.raises(
        RewardError, match=r"rewards\[0\] \('xml_count'\) and rewards\[2\] \('xml_count'\) are both named"
    ):
        load("xml_count", "soft_format", "xml_count")
    with pytest.raises(RewardError, match=r"both named 'length_penalty'.*bind the settings under a new name"):
        load(
            Spec("rewards.examples.length_penalty:length_penalty", kwargs={"max_chars": 5}),
            Spec("does_not_exist.py:length_penalty"),
        )


def test_kwargs_for_a_builtin_other_than_tags():
    with pytest.raises(RewardError, match=r"'strict_format' is a built-in, whose one setting is 'tags'.*\['score'\]"
                                          r".*scale it with 'weight'"):
        load(Spec("strict_format", kwargs={"score": 1.0}))


THINK = "<think>\nSo 48 + 24.\n</think>\n<answer>\n72\n</answer>"
REASONING = "<reasoning>\nSo 48 + 24.\n</reasoning>\n<answer>\n72\n</answer>"


@pytest.mark.parametrize("name", list(BUILTIN_REWARDS))
def test_builtins_score_the_tags_a_recipe_names(name):
    (default,) = load(name)
    (think,) = load(Spec(name, kwargs={"tags": {"reasoning": "think", "answer": "answer"}}))
    assert think.__name__ == default.__name__ == name
    assert trl_call(think, [THINK]) == trl_call(default, [REASONING])
    assert trl_call(think, [THINK]) > [0.0]
    if name not in ("int_answer", "gsm8k_correctness", "lenient_correctness", "math_correctness"):
        assert trl_call(default, [THINK]) < trl_call(think, [THINK])  # the reasoning tags matter to the format rewards


@pytest.mark.parametrize(
    "tags, message",
    [
        ({"reasoning": "<think>"}, r"tag name '<think>' for the reasoning is not a tag name.*no '<' or '>'"),
        ({"think": "think"}, r"unknown keys \['think'\]; it takes 'reasoning' and 'answer'"),
        ({"reasoning": "answer"}, r"both 'answer'; give them different names"),
        ("think", r"tags must be a mapping"),
    ],
)
def test_bad_tags_are_refused_with_the_fix(tags, message):
    with pytest.raises(RewardError, match=r"reward 'xml_count': factory called with .*" + message):
        load(Spec("xml_count", kwargs={"tags": tags}))


def test_kwargs_for_a_reward_that_is_not_a_factory(reward_file, tmp_path):
    reward_file("def plain(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardError, match=r"called as a factory, but it takes 'completions'.*Remove the kwargs"):
        load(Spec("my_rewards.py:plain", kwargs={"x": 1}), base_dir=tmp_path)


def test_factory_given_unknown_kwargs():
    spec = Spec("rewards.examples.length_penalty:length_penalty", kwargs={"max_tokens": 5})
    with pytest.raises(
        RewardError, match=r"factory does not accept kwargs \{'max_tokens': 5\}.*\(max_chars: int = 1000"
    ):
        load(spec)


def test_factory_that_rejects_its_settings():
    spec = Spec("rewards.examples.length_penalty:length_penalty", kwargs={"max_chars": -1})
    with pytest.raises(RewardError, match=r"factory called with \{'max_chars': -1\} failed with ValueError: max_chars"):
        load(spec)


def test_factory_that_returns_no_function(reward_file, tmp_path):
    reward_file("def make(scale):\n    return scale\n")
    with pytest.raises(RewardError, match=r"factory returned a int, not a reward function"):
        load(Spec("my_rewards.py:make", kwargs={"scale": 2}), base_dir=tmp_path)


def test_factory_named_without_kwargs_gets_a_hint():
    with pytest.raises(
        RewardError, match=r"does not accept 'prompts'.*If 'length_penalty' is a factory, give it kwargs"
    ):
        load("rewards.examples.length_penalty:length_penalty")


@pytest.mark.parametrize("weight", [float("nan"), "heavy", None])
def test_bad_weight(weight):
    with pytest.raises(RewardError, match=r"rewards\[0\] \('xml_count'\) has weight"):
        load(Spec("xml_count", weight=weight))


def test_no_rewards():
    with pytest.raises(RewardError, match="names no rewards"):
        load_reward_functions([], COLUMNS)


# --- the guard at training time --------------------------------------------------------------------


def test_guard_keeps_the_name_and_converts_values():
    def scores(prompts, completions, **kwargs):
        return (value for value in [1, True, None])  # any iterable of numbers or None

    guarded = guard_reward(scores)
    assert guarded.__name__ == "scores"
    assert guard_reward(scores, "renamed").__name__ == "renamed"
    assert guard_reward(guarded) is guarded
    assert guard_reward(guarded, "other").__wrapped__ is scores
    assert trl_call(guarded, ["a", "b", "c"]) == [1.0, 1.0, None]


def test_guard_reports_a_raising_reward_with_the_failing_completion():
    def fragile(prompts, completions, **kwargs):
        return [1.0 / len(c[0]["content"]) for c in completions]

    with pytest.raises(RewardError) as caught:
        trl_call(guard_reward(fragile), ["fine", "", "also fine"])
    message = str(caught.value)
    assert "reward 'fragile' raised ZeroDivisionError: float division by zero" in message
    assert "test_reward_loading.py" in message  # where it raised
    assert "on completion 1 of 3 ('')" in message
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_guard_reports_the_wrong_number_of_values():
    with pytest.raises(RewardError, match=r"reward 'short' returned 1 values for 2 completions"):
        trl_call(guard_reward(lambda **kwargs: [1.0], "short"), ["a", "b"])


@pytest.mark.parametrize("bad", ["1.0", [1.0], {"value": 1}])
def test_guard_reports_values_that_are_not_numbers(bad):
    with pytest.raises(
        RewardError, match=r"reward 'odd' returned .* for completion 1 of 2 \('second'\); return a float"
    ):
        trl_call(guard_reward(lambda **kwargs: [0.0, bad], "odd"), ["first", "second"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_guard_reports_nan_and_inf(bad):
    with pytest.raises(
        RewardError, match=r"reward 'unstable' returned (nan|inf|-inf) for completion 0 of 2 \('<reasoning>"
    ):
        trl_call(guard_reward(lambda **kwargs: [bad, 0.0], "unstable"), ["<reasoning>\n" + "x" * 200, "b"])


@pytest.mark.parametrize("bad", [None, "0.5", {"a": 1.0}, 0.5])
def test_guard_reports_a_result_that_is_not_a_list(bad):
    with pytest.raises(RewardError, match=r"reward 'scalar' returned .*; return a list with one value per completion"):
        trl_call(guard_reward(lambda **kwargs: bad, "scalar"), ["a"])


def test_guard_accepts_numpy_and_tensor_scalars():
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")

    def mixed(**kwargs):
        return [numpy.float32(0.5), torch.tensor(2.0), numpy.int64(3)]

    assert trl_call(guard_reward(mixed), ["a", "b", "c"]) == [0.5, 2.0, 3.0]


def test_guard_wraps_async_rewards():
    import asyncio

    async def judge(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    async def broken_judge(prompts, completions, **kwargs):
        return [math.nan]

    class Judge:
        async def __call__(self, prompts, completions, **kwargs):
            return [1.0] * len(completions)

    guarded = guard_reward(judge)
    assert guarded.__name__ == "judge"
    assert asyncio.run(trl_call(guard_reward(Judge()), ["a"])) == [1.0]
    assert asyncio.run(trl_call(guarded, ["a", "b"])) == [0.5, 0.5]
    with pytest.raises(RewardError, match=r"reward 'broken_judge' returned nan for completion 0 of 1"):
        asyncio.run(trl_call(guard_reward(broken_judge), ["a"]))


def test_loaded_rewards_are_guarded(reward_file, tmp_path):
    reward_file("def nan_reward(prompts, completions, **kwargs):\n    return [float('nan')] * len(completions)\n")
    (func,) = load("my_rewards.py:nan_reward", base_dir=tmp_path)
    with pytest.raises(RewardError, match=r"reward 'nan_reward' returned nan for completion 0"):
        trl_call(func, ["a"])


def test_trl_logs_a_guarded_reward_under_its_name():
    # TRL names a reward with trl.trainer.utils.get_callable_name; read it from the source rather than
    # importing trl (slow), so this stays fast: it must read __name__.
    import importlib.util

    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "trainer" / "utils.py").read_text()
    assert 'return getattr(func, "__name__", type(func).__name__)' in source
