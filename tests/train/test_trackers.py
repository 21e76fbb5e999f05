"""logging.report_to beyond W&B: a real tiny CPU run that reports to TensorBoard alone, read back with
TensorBoard's own reader (the refusals of bad report_to values: tests/unit/test_report_to.py).

W&B's offline files are inspected on the shared run (tests/train/test_train.py).
"""

from __future__ import annotations

import json
import math

import pytest

from grpo_r1 import train as train_module
from grpo_r1.run.tracking import SUMMARY_FILE, TENSORBOARD_DIR, read_metrics
from tests.helpers import CPU_RECIPE

STEPS = 3
TINY = [f"training.max_steps={STEPS}", "training.save_steps=100", "generation.num_generations=2",
        "training.per_device_train_batch_size=2", "generation.max_completion_length=16", "cold_start.steps=0",
        "data.arithmetic_examples=50"]


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path_factory.mktemp("trackers") / "run"
    code = train_module.main([str(CPU_RECIPE), f"run.output_dir={run_dir}", *TINY, "logging.report_to=[tensorboard]"])
    assert code == 0
    return run_dir


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under `log_dir`: tag -> [(step, value)], as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every value
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def same(logged, read: float) -> bool:
    """A metrics.jsonl value (None for NaN) against TensorBoard's float32 copy of it."""
    if logged is None:
        return math.isnan(read)
    return math.isclose(read, logged, rel_tol=1e-6, abs_tol=1e-6)


def test_every_logged_metric_reaches_tensorboard_once_per_step(tensorboard_run):
    run_dir = tensorboard_run
    assert list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*")), "no event files in <run>/tensorboard"
    scalars = read_scalars(run_dir / TENSORBOARD_DIR)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("reward", "reward_std", "loss", "kl", "rewards/graded_format/mean", "completions/mean_length"):
        assert f"train/{key}" in scalars, sorted(scalars)
    # What metrics.jsonl holds, step by step, then the end-of-training summary (train_runtime, epoch, ...)
    # at the last step: each of them under "train/<key>", with nothing else beside them.
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    summary.pop("first_step")  # the summary's own note of where the run began, not a logged metric
    expected: dict[str, list[tuple[int, float | None]]] = {}
    for record in [*records, summary]:
        for key, value in record.items():
            if key != "step":
                expected.setdefault(f"train/{key}", []).append((record["step"], value))
    assert set(scalars) == set(expected), sorted(set(scalars) ^ set(expected))
    for tag, logged in expected.items():
        read = scalars[tag]
        assert [step for step, _ in read] == [step for step, _ in logged], (tag, read, logged)
        assert all(same(value, got) for (_, value), (_, got) in zip(logged, read)), (tag, read, logged)


def test_no_wandb_without_wandb_in_report_to(tensorboard_run):
    run_dir = tensorboard_run
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb_run_id").exists()
    assert not (run_dir / "checkpoints" / "runs").exists(), "transformers' default TensorBoard folder was used"
