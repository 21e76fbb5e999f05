"""completions.jsonl of the shared training run: one group of completions per step, with each reward and
the advantage, as the model saw the prompt (the callback alone: tests/unit/test_completions_log.py)."""

from __future__ import annotations

import json

from tests.train.conftest import NUM_GENERATIONS, REWARD_NAMES, STEPS


def test_each_step_logs_one_group_with_every_reward_and_advantage(shared_run):
    rows = [json.loads(line) for line in (shared_run.run_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [step for step in range(1, STEPS + 1) for _ in range(NUM_GENERATIONS)]
    assert set(rows[0]) == {"step", "prompt", "completion", "reward", "advantage",
                            *(f"rewards/{name}" for name in REWARD_NAMES)}
    assert all("How many" in r["prompt"] for r in rows)  # the question, as the model saw it
    assert all(isinstance(r["completion"], str) and isinstance(r["advantage"], float) for r in rows)
