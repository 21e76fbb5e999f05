"""Learning-signal guards: the callback fed TRL's real logs (real trainings that trip them:
tests/train/test_guards_in_training.py)."""

import json
import math

import pytest
from transformers import TrainerControl, TrainerState

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import GuardsConfig, load_recipe
from grpo_r1.trainer.guards import (
    GUARDS_FILE,
    GuardStop,
    LearningSignalGuards,
)
from tests.helpers import CPU_RECIPE

# ----------------------------------------------------------------------------- the callback on TRL's logs

# One step's log with the keys TRL 1.14.2's GRPOTrainer.log passes to callbacks (as in a CPU run's metrics.jsonl).
TRL_LOG = {
    "loss": 0.0123, "grad_norm": 0.52, "learning_rate": 2e-05, "num_tokens": 1570.0,
    "completions/mean_length": 61.5, "completions/min_length": 33.0, "completions/max_length": 96.0,
    "completions/clipped_ratio": 0.25, "completions/mean_terminated_length": 50.0,
    "completions/min_terminated_length": 33.0, "completions/max_terminated_length": 71.0,
    "rewards/graded_format/mean": 0.125, "rewards/graded_format/std": 0.1,
    "rewards/lenient_correctness/mean": 0.5, "rewards/lenient_correctness/std": 0.9,
    "reward": 0.625, "reward_std": 0.95, "frac_reward_zero_std": 0.0, "kl": 0.0004, "entropy": 1.2,
}


class _Args:
    """The GRPOConfig fields the messages quote."""

    learning_rate, max_grad_norm, max_completion_length, num_generations, temperature, fp16 = (
        2e-5, 1.0, 96, 4, 0.9, False)


def _feed(guards, logs_by_step, args=None):
    state, control = TrainerState(), TrainerControl()
    for step, logs in logs_by_step:
        state.global_step = step
        guards.on_log(args or _Args(), state, control, logs=dict(logs))
    return control


def test_logprob_gap_warns_with_the_engine_and_bound(tmp_path):
    guards = LearningSignalGuards(GuardsConfig(patience=3), tmp_path, engine="vllm")
    gap = {**TRL_LOG, "sampling/sampling_logp_difference/mean": 0.4, "sampling/sampling_logp_difference/max": 3.5}
    control = _feed(guards, [(1, gap), (2, gap)])
    assert guards.events == [], "two steps are fewer than the patience of 3"
    control = _feed(guards, [(3, gap), (4, gap)])
    assert [e.guard for e in guards.events] == ["logprob_gap"], "it fires once per streak"
    message = guards.events[0].message
    assert message.startswith("the vllm engine's logprobs differed from the trainer's by 0.4 per token on average, "
                              "at most 3.5 for 3 steps")
    assert "guards.logprob_gap_max=0.1" in message and "generation.engine=hf" in message
    assert not control.should_training_stop
    assert json.loads((tmp_path / GUARDS_FILE).read_text())["guard"] == "logprob_gap"


def test_a_streak_that_clears_starts_again():
    guards = LearningSignalGuards(GuardsConfig(patience=2, truncation="stop"))
    cut = {**TRL_LOG, "completions/clipped_ratio": 0.95}
    control = _feed(guards, [(1, cut), (2, TRL_LOG), (3, cut)])
    assert guards.events == [] and not control.should_training_stop
    control = _feed(guards, [(4, cut)])
    assert guards.stopped is not None and guards.stopped.step == 4 and control.should_training_stop
    assert guards.stopped.message.startswith("95% of completions hit generation.max_completion_length=96 for 2 steps "
                                             "(steps 3-4")
    with pytest.raises(GuardStop, match=r"^training stopped at step 4 by guards.truncation=stop: 95% of completions"):
        guards.raise_if_stopped("runs/x/adapter")


def test_patience_counts_steps_when_logging_every_five():
    guards = LearningSignalGuards(GuardsConfig(patience=5))
    _feed(guards, [(5, {**TRL_LOG, "frac_reward_zero_std": 1.0})])
    assert [e.message.split(":")[0] for e in guards.events] == [
        "100% of groups had all-equal rewards for 5 steps (steps 1-5; guards.equal_rewards_fraction=0.95)"]


def test_a_resumed_run_counts_patience_from_where_it_resumed():
    guards = LearningSignalGuards(GuardsConfig(patience=3))
    state, control = TrainerState(), TrainerControl()
    state.global_step = 100
    guards.on_train_begin(_Args(), state, control)
    _feed(guards, [(101, {**TRL_LOG, "frac_reward_zero_std": 1.0}), (102, {**TRL_LOG, "frac_reward_zero_std": 1.0})])
    assert guards.events == []
    _feed(guards, [(103, {**TRL_LOG, "frac_reward_zero_std": 1.0})])
    assert [e.step for e in guards.events] == [103] and "(steps 101-103;" in guards.events[0].message


def test_nan_grad_norm_in_the_log_stops_at_once_unless_off():
    guards = LearningSignalGuards(GuardsConfig(patience=10))
    control = _feed(guards, [(1, TRL_LOG), (2, {**TRL_LOG, "grad_norm": math.nan})])
    assert control.should_training_stop and guards.stopped.guard == "nonfinite"
    assert guards.stopped.message.startswith("grad_norm=nan at step 2: training diverged; "
                                             "lower training.learning_rate (now 2e-05)")

    off = LearningSignalGuards(GuardsConfig(nonfinite="off"))
    assert not _feed(off, [(1, {**TRL_LOG, "grad_norm": math.inf, "loss": math.nan})]).should_training_stop

    class Fp16(_Args):
        fp16 = True  # loss scaling: an infinite gradient only makes the scaler skip the step

    scaled = LearningSignalGuards(GuardsConfig())
    assert not _feed(scaled, [(1, {**TRL_LOG, "grad_norm": math.inf})], Fp16()).should_training_stop
    assert _feed(scaled, [(2, {**TRL_LOG, "loss": math.inf})], Fp16()).should_training_stop


def test_guards_section_is_validated():
    assert load_recipe(CPU_RECIPE, ["guards.truncation=off"]).guards.truncation == "off"  # YAML reads off as false
    with pytest.raises(RecipeError, match=r"unknown key 'guards.patiense'; did you mean 'guards.patience'"):
        load_recipe(CPU_RECIPE, ["guards.patiense=3"])
    with pytest.raises(RecipeError, match=r"'guards.equal_rewards' must be one of 'warn', 'stop', 'off'"):
        load_recipe(CPU_RECIPE, ["guards.equal_rewards=halt"])
    with pytest.raises(RecipeError, match=r"'guards.truncation_fraction' is a fraction in \(0, 1\], got 1.5"):
        load_recipe(CPU_RECIPE, ["guards.truncation_fraction=1.5"])
