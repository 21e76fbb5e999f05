"""rewards[i].timeout_s: a reward call that takes too long stops the run with a message naming the
reward, the step, a completion and the setting; the abandoned call never keeps the process alive.
(Through the command line: tests/unit/test_bad_input.py's reward-hangs, and
tests/train/test_failures_in_training.py for a reward that hangs once training has begun.)"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from grpo_r1.errors import RewardError
from grpo_r1.recipe import load_recipe
from grpo_r1.run.resume import check_same_experiment
from grpo_r1.scoring import guard_reward
from grpo_r1.scoring.guard import none_warnings_off
from tests.helpers import CPU_RECIPE

COMPLETIONS = [[{"role": "assistant", "content": "<answer>7</answer> after a long think"}], [{"content": "8"}]]
STATE = SimpleNamespace(global_step=11, max_steps=30)


def sleeper(seconds: float):
    def slow(prompts, completions, **kwargs):
        time.sleep(seconds)
        return [1.0 for _ in completions]
    return slow


def call(func, **columns):
    return func(prompts=["p", "p"], completions=COMPLETIONS, trainer_state=STATE, **columns)


def test_a_call_past_its_limit_stops_naming_the_reward_the_step_a_completion_and_the_setting():
    guarded = guard_reward(sleeper(30), "slow_judge", timeout_s=0.3, setting="rewards.2.timeout_s")
    started = time.monotonic()
    with pytest.raises(RewardError) as info:
        call(guarded)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith("reward 'slow_judge' did not return within 0.3 s at step 12; the first of its 2 "
                              "completions: '<answer>7</answer> after a long think'"), message
    assert "rewards.2.timeout_s=120" in message and "0: no limit" in message


def test_a_call_within_its_limit_returns_its_values_and_errors_keep_their_message():
    assert call(guard_reward(sleeper(0.01), "quick", timeout_s=5)) == [1.0, 1.0]

    def picky(prompts, completions, **kwargs):
        return [1.0 / (len(c[0]["content"]) - 1) for c in completions]  # the second completion, "8", divides by 0

    with pytest.raises(RewardError, match=r"reward 'picky' raised ZeroDivisionError: .* on completion 1 of 2"):
        call(guard_reward(picky, timeout_s=5))


def test_no_limit_runs_the_reward_in_the_callers_thread():
    import threading

    seen = []

    def where(prompts, completions, **kwargs):
        seen.append(threading.current_thread())
        return [0.0 for _ in completions]

    call(guard_reward(where, timeout_s=0))
    call(guard_reward(where, timeout_s=5))
    assert seen[0] is threading.main_thread() and seen[1] is not threading.main_thread()


def test_the_callers_context_reaches_the_worker_thread(caplog):
    def skips(prompts, completions, **kwargs):
        return [None for _ in completions]

    guarded = guard_reward(skips, timeout_s=5)
    with caplog.at_level(logging.WARNING), none_warnings_off():
        call(guarded, answer=["7", "8"])
    assert "returned None" not in caplog.text  # none_warnings_off held inside the worker thread
    call(guarded, answer=["7", "8"])
    assert "reward 'skips' returned None (cannot judge) for 2 of 2 completions at step 12" in caplog.text


def test_async_rewards_get_the_same_limit_and_their_own_timeouts_are_theirs():
    async def stuck(prompts, completions, **kwargs):
        await asyncio.sleep(30)
        return [0.0 for _ in completions]

    async def own_timeout(prompts, completions, **kwargs):
        raise TimeoutError("the judge service timed out")

    with pytest.raises(RewardError, match=r"reward 'stuck' did not return within 0.2 s at step 12"):
        asyncio.run(call(guard_reward(stuck, timeout_s=0.2)))
    with pytest.raises(RewardError, match=r"reward 'own_timeout' raised TimeoutError: the judge service timed out"):
        asyncio.run(call(guard_reward(own_timeout, timeout_s=5)))


def test_an_abandoned_call_does_not_keep_the_process_alive():
    script = textwrap.dedent("""
        import time
        from grpo_r1.errors import RewardError
        from grpo_r1.scoring import guard_reward

        def hangs(prompts, completions, **kwargs):
            time.sleep(3600)

        try:
            guard_reward(hangs, timeout_s=0.2)(prompts=["p"], completions=[[{"content": "x"}]])
        except RewardError as e:
            print("stopped:", e)
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "stopped: reward 'hangs' did not return within 0.2 s" in proc.stdout, proc.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("bad", [-1, float("inf"), "soon", True])
def test_a_limit_must_be_seconds(bad):
    with pytest.raises(RewardError, match="timeout_s must be a number of seconds >= 0"):
        guard_reward(sleeper(0), "r", timeout_s=bad)


def test_the_default_limit_and_a_resume_may_change_it():
    recipe = load_recipe(CPU_RECIPE)
    assert [spec.timeout_s for spec in recipe.rewards] == [60.0, 60.0]
    saved = recipe.to_dict()
    check_same_experiment(saved, load_recipe(CPU_RECIPE, ["rewards.1.timeout_s=600"]), CPU_RECIPE.parent)
    with pytest.raises(Exception, match=r"rewards.1.weight \(1.0 -> 2.0\)"):
        check_same_experiment(saved, load_recipe(CPU_RECIPE, ["rewards.1.weight=2"]), CPU_RECIPE.parent)


def test_guarding_a_guarded_reward_keeps_its_limit():
    guarded = guard_reward(sleeper(30), "slow_judge", timeout_s=0.3)
    assert guard_reward(guarded) is guarded  # as the reward table does
    with pytest.raises(RewardError, match="did not return within 0.3 s"):
        call(guard_reward(guarded, "renamed"))
