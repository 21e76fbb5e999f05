"""run.preflight: when the worst-case step runs (the step itself: tests/train/test_preflight.py)."""

from __future__ import annotations

import torch

from grpo_r1.launch import Launch, launch_from_env
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.preflight import preflight_enabled
from tests.helpers import CPU_RECIPE


def test_auto_preflight_is_for_one_process_on_a_cuda_gpu():
    auto = load_recipe(CPU_RECIPE)
    assert preflight_enabled(auto, launch_from_env({})) == torch.cuda.is_available()
    assert preflight_enabled(auto, Launch(cpu=False)) and not preflight_enabled(auto, Launch(cpu=True))
    assert not preflight_enabled(auto, Launch(world_size=2, cpu=False))  # each process's model is whole only later
    assert preflight_enabled(load_recipe(CPU_RECIPE, ["run.preflight=true"]), Launch(cpu=True))
    assert not preflight_enabled(load_recipe(CPU_RECIPE, ["run.preflight=false"]), Launch(cpu=False))
