"""`python -m grpo_r1.plot RUN_DIR`: PNGs with the expected panels from a metrics.jsonl."""

import json

import matplotlib.image
import pytest

from grpo_r1.errors import GrpoR1Error
from grpo_r1.plot import main
from grpo_r1.run.plots import build_figures, plot_run


def _record(step, gap=True):
    record = {
        "step": step, "loss": 0.01 * step, "grad_norm": 0.5, "learning_rate": 1e-5 / step,
        "completions/mean_length": 30.0 + step, "completions/min_length": 20.0, "completions/max_length": 64.0,
        "completions/clipped_ratio": 0.5, "reward": 0.2 * step, "reward_std": 0.1, "frac_reward_zero_std": 0.25,
        "rewards/graded_format/mean": 0.1 * step, "rewards/graded_format/std": 0.05,
        "rewards/lenient_correctness/mean": None, "rewards/lenient_correctness/std": None,  # every reward skipped
        "kl": 0.001 * step,
    }
    if gap:
        record["sampling/sampling_logp_difference/mean"] = 0.01
        record["sampling/sampling_logp_difference/max"] = 0.2
    return record


def _run_dir(tmp_path, records):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _titles(figure):
    return [ax.get_title() for ax in figure.axes]


def test_plot_run_writes_readable_pngs(tmp_path):
    run = _run_dir(tmp_path, [_record(step) for step in range(1, 6)])
    paths = plot_run(run)
    assert paths == [run / "plots" / "rewards.png", run / "plots" / "training.png"]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image.std() > 0, f"{path.name} is blank"


def test_panels_cover_rewards_and_training_metrics():
    figures = build_figures([_record(step) for step in range(1, 4)])
    assert _titles(figures["rewards"]) == ["total reward", "reward: graded_format", "reward: lenient_correctness"]
    assert _titles(figures["training"]) == [
        "KL to the base model", "loss", "completion length", "truncation rate", "learning rate", "gradient norm",
        "groups without reward spread", "engine vs trainer logprob gap",
    ]


def test_panels_of_metrics_never_logged_are_left_out():
    records = [{"step": 1, "reward": 0.5, "reward_std": 0.1, "kl": 0.0}, {"step": 2, "reward": 0.7, "kl": 0.01}]
    figures = build_figures(records)
    assert _titles(figures["rewards"]) == ["total reward"]
    assert _titles(figures["training"]) == ["KL to the base model"]
    assert "engine vs trainer logprob gap" not in _titles(build_figures([_record(1, gap=False)])["training"])


def test_the_std_band_is_drawn_around_the_mean():
    figure = build_figures([_record(step) for step in range(1, 4)])["rewards"]
    ax = figure.axes[0]
    low, high = (ax.collections[0].get_paths()[0].vertices[:, 1].min(),
                 ax.collections[0].get_paths()[0].vertices[:, 1].max())
    assert low == pytest.approx(0.2 - 0.1) and high == pytest.approx(0.6 + 0.1)


def test_cli_prints_the_paths(tmp_path, capsys):
    run = _run_dir(tmp_path, [_record(1), _record(2)])
    assert main([str(run), "--out", str(tmp_path / "pngs")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "pngs" / "rewards.png"),
                                               str(tmp_path / "pngs" / "training.png")]


def test_a_folder_without_metrics_is_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(GrpoR1Error, match="no training metrics yet"):
        plot_run(tmp_path)


def test_reward_curves_carry_a_rolling_mean_with_its_window():
    records = [_record(step) for step in range(1, 25)]
    ax = build_figures(records)["rewards"].axes[0]
    per_step, smoothed = ax.get_lines()
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["per step", "mean of 3 steps"]
    assert list(smoothed.get_ydata())[:3] == pytest.approx([0.2, 0.3, 0.4])  # means of 0.2, 0.4, 0.6 so far
    assert list(smoothed.get_ydata())[-1] == pytest.approx((0.2 * 22 + 0.2 * 23 + 0.2 * 24) / 3)


def test_a_std_band_stops_at_zero_for_a_reward_that_never_went_below():
    records = [{**_record(step), "reward": 0.05, "reward_std": 0.5} for step in range(1, 4)]
    band = build_figures(records)["rewards"].axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.0)
    signed = [{**_record(step), "reward": -0.05 * step, "reward_std": 0.5} for step in range(1, 4)]
    band = build_figures(signed)["rewards"].axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(-0.15 - 0.5)  # a reward that can go negative keeps its band


def test_the_step_time_split_is_drawn_when_timed():
    timed = [{**_record(step), "timing/generation_s": 10.0, "timing/scoring_s": 1.5, "timing/training_s": 4.0,
              "timing/step_s": 15.5} for step in range(1, 4)]
    figure = build_figures(timed)["training"]
    ax = figure.axes[_titles(figure).index("step time split")]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["generation", "scoring", "training"]
    assert "step time split" not in _titles(build_figures([_record(1)])["training"])


def test_an_evaluation_in_the_run_folder_adds_held_out_accuracy(tmp_path):
    run = _run_dir(tmp_path, [_record(step) for step in range(1, 4)])
    evaluation = {"settings": {"questions": 100, "split": "test"},
                  "metrics": {"base": {"accuracy": 0.0, "lenient_accuracy": 0.11},
                              "adapter": {"accuracy": 0.68, "lenient_accuracy": 0.7}}}
    (run / "eval.json").write_text(json.dumps(evaluation))
    plot_run(run)
    figure = build_figures([_record(step) for step in range(1, 4)], evaluation)["rewards"]
    ax = figure.axes[-1]
    assert ax.get_title() == "held-out: 100 questions (test)"
    assert [round(bar.get_height(), 2) for bar in ax.patches] == [0.0, 0.11, 0.68, 0.7]
