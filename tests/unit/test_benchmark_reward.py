"""rewards.benchmark.text_hash: the benchmarking reward that varies on random-init models."""

from __future__ import annotations

import statistics

from grpo_r1.recipe.sections import RewardSpec
from grpo_r1.scoring import load_reward_functions
from rewards.benchmark import text_hash, text_hash_value


def test_values_are_in_the_unit_interval_deterministic_and_differ_between_texts():
    texts = [f"random tokens {i} \u00e9\u4e2d" for i in range(200)] + [""]
    values = text_hash([""] * len(texts), texts)
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == text_hash([""] * len(texts), texts)  # the same text, the same value, every call
    assert len(set(values)) == len(values)
    assert statistics.pstdev(values) > 0.2  # about 1/sqrt(12) = 0.29 for a uniform value
    assert text_hash_value("abc") == text_hash_value("abc") != text_hash_value("abd")


def test_plain_and_conversational_completions_score_the_same():
    texts = ["<reasoning>\nx\n</reasoning>", "noise \u0416 72"]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    assert text_hash(["p", "p"], chats, answer=["1", "1"]) == text_hash(["p", "p"], texts, answer=["1", "1"])


def test_a_recipe_names_it_by_module_and_trl_can_call_it():
    (func,) = load_reward_functions([RewardSpec(name="rewards.benchmark:text_hash")], ["prompt", "answer"])
    assert func.__name__ == "text_hash"
    assert len(func(prompts=["p"] * 6, completions=[f"c{i}" for i in range(6)], answer=["1"] * 6)) == 6
