"""The compact console line and the end-of-run summary, from logged metrics."""

from pathlib import Path

from grpo_r1.trainer.console import compact_line, format_duration, summary_line

LOGS = {
    "loss": 0.01, "reward": 1.234, "reward_std": 0.5, "rewards/graded_format/mean": 0.41,
    "rewards/lenient_correctness/mean": 0.824, "rewards/lenient_correctness/paid_frac": 0.45,
    "rewards/graded_format/paid_frac": 1.0, "kl": 0.0123, "completions/mean_length": 63.4,
    "completions/clipped_ratio": 0.125, "timing/step_s": 8.0,
}


def test_compact_line_has_what_matters_in_one_line():
    line = compact_line(LOGS, step=12, max_steps=30, seconds_per_step=8.1)
    assert line == ("step 12/30  reward 1.23 (graded_format 0.41, lenient_correctness 0.82)  correct 45%  "
                    "kl 0.0123  len 63  trunc 12%  8.1 s/step  ETA 2:26")
    assert "\n" not in line


def test_compact_line_leaves_out_what_was_not_logged():
    assert compact_line({"loss": 0.1, "reward": 0.5}, 1, 3, None) == "step 1/3  reward 0.50"


def test_durations():
    assert [format_duration(s) for s in (7, 154, 3723)] == ["0:07", "2:34", "1:02:03"]


def test_summary_line_says_what_was_learned_and_what_to_run_next(tmp_path: Path):
    metrics = [{"reward": r} for r in (0.1, 0.3, 0.5, 1.0, 1.2, 1.4)]
    (tmp_path / "plots").mkdir()
    line = summary_line(tmp_path, tmp_path / "adapter", 6, 65.0, metrics, tmp_path / "recipe.yaml")
    assert line.startswith("done: 6 steps in 1:05; reward 0.30 -> 1.20 (mean of the first and last 3 logged steps)")
    assert f"adapter in {tmp_path / 'adapter'}, plots in {tmp_path / 'plots'}" in line
    assert line.endswith(f"python -m grpo_r1.evaluate {tmp_path / 'recipe.yaml'} --adapter {tmp_path}")
    assert "wandb" not in line  # no W&B run here


def test_summary_line_says_how_to_view_and_upload_an_offline_wandb_run(tmp_path: Path):
    (tmp_path / "wandb" / "offline-run-20261202_101742-abc").mkdir(parents=True)
    line = summary_line(tmp_path, tmp_path / "adapter", 1, 5.0, [{"reward": 0.5}], tmp_path / "recipe.yaml")
    assert line.endswith(f"W&B offline: view with wandb leet {tmp_path / 'wandb' / 'latest-run'}, "
                         f"upload with wandb sync {tmp_path / 'wandb'}/offline-run-*")


def test_a_step_with_missing_or_non_finite_metrics_still_gets_its_line():
    """After a NaN loss TRL logs None and NaN values (tests/train/test_guards_in_training.py): the line says nan."""
    logs = {"reward": float("nan"), "rewards/a/mean": None, "rewards/b/mean": 0.5, "kl": None,
            "completions/mean_length": float("nan"), "completions/clipped_ratio": 0.25,
            "rewards/b_correct/paid_frac": None}
    line = compact_line(logs, 3, 10, None)
    assert line == "step 3/10  reward nan (a nan, b 0.50)  kl nan  len nan  trunc 25%"
