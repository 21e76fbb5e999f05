"""Training curves of a run as PNG files (`python -m grpo_r1.plot RUN_DIR` draws them again).

Reads `RUN_DIR/metrics.jsonl` (one record per logged step, written by the trainer) and writes

    RUN_DIR/plots/rewards.png   the total reward, then each reward function: the per-step mean with
                                a +-1 std band (cut at 0 for a reward that never went below it) and
                                a rolling mean over several steps (its window in the legend); then,
                                when `python -m grpo_r1.evaluate --adapter RUN_DIR` has written
                                RUN_DIR/eval.json, the held-out accuracy of the base model and the
                                adapter
    RUN_DIR/plots/training.png  KL, loss, completion length (min-max band), truncation rate,
                                learning rate, gradient norm, share of groups whose rewards are all
                                equal (no GRPO signal), the engine/trainer logprob gap when the
                                engine logs it, and the split of a step's time (generation, scoring,
                                training)

A panel appears only when its metric was logged. `plot_run(run_dir)` does the same from Python
(training calls it at the end of a run); `build_figures(records)` returns the figures without
writing them. Figures are drawn with matplotlib's Agg canvas, never pyplot, so nothing here
needs a display or changes the backend of a notebook that imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_r1.errors import GrpoR1Error
from grpo_r1.run.folder import EVAL_FILE
from grpo_r1.run.tracking import METRICS_FILE, read_metrics

PLOTS_DIR = "plots"
COLUMNS = 3
STEP_PARTS = (("timing/generation_s", "generation"), ("timing/scoring_s", "scoring"), ("timing/training_s", "training"))


@dataclass
class Panel:
    """One subplot: a line for `key` over steps, with an optional band between two other series."""

    title: str
    key: str
    ylabel: str = ""
    band: tuple[str, str] | None = None  # ("low key", "high key"), or ("-std", key) for mean +- std
    extra: tuple[str, str] | None = None  # (key, label) of a second, dashed line
    smooth: bool = False  # also a rolling mean over `smoothing_window` steps
    stack: tuple[tuple[str, str], ...] = ()  # (key, label) series stacked as areas instead of one line
    bars: dict[str, dict[str, float]] | None = None  # {model: {metric label: value}}: a bar chart, not a line


def smoothing_window(count: int) -> int:
    """Steps in the rolling mean of a curve of `count` points: about an eighth of them, 3 to 25."""
    return max(3, min(25, round(count / 8)))


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each point and the `window - 1` before it (fewer at the start), NaN points left out."""
    out = []
    for index in range(len(values)):
        recent = [v for v in values[max(0, index - window + 1) : index + 1] if not math.isnan(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def reward_panels(keys: Sequence[str]) -> list[Panel]:
    """The total reward, then one panel per reward function, in the order they were logged."""
    panels = ([Panel("total reward", "reward", "reward", band=("-std", "reward_std"), smooth=True)]
              if "reward" in keys else [])
    for key in keys:
        if key.startswith("rewards/") and key.endswith("/mean"):
            name = key[len("rewards/"):-len("/mean")]
            panels.append(Panel(f"reward: {name}", key, "reward", band=("-std", f"rewards/{name}/std"), smooth=True))
    return panels


def evaluation_panel(evaluation: dict[str, Any]) -> Panel | None:
    """Held-out accuracy (and lenient accuracy) per model evaluated, from an eval.json; None without metrics."""
    metrics = evaluation.get("metrics") or {}
    bars = {model: {label: float(values[key]) for key, label in (("accuracy", "accuracy"),
                                                                   ("lenient_accuracy", "lenient"))
                    if isinstance(values.get(key), (int, float))}
            for model, values in metrics.items() if isinstance(values, dict)}
    bars = {model: values for model, values in bars.items() if values}
    if not bars:
        return None
    settings = evaluation.get("settings") or {}
    title = f"held-out: {settings.get('questions', '?')} questions ({settings.get('split', '?')})"
    return Panel(title, "", "share right", bars=bars)


def training_panels(keys: Sequence[str]) -> list[Panel]:
    """The optimisation and sampling panels whose metrics were logged."""
    candidates = [
        Panel("KL to the base model", "kl", "KL"),
        Panel("loss", "loss", "loss"),
        Panel("completion length", "completions/mean_length", "tokens",
              band=("completions/min_length", "completions/max_length")),
        Panel("truncation rate", "completions/clipped_ratio", "share cut off"),
        Panel("learning rate", "learning_rate", "lr"),
        Panel("gradient norm", "grad_norm", "norm"),
        Panel("groups without reward spread", "frac_reward_zero_std", "share of groups"),
        Panel("engine vs trainer logprob gap", "sampling/sampling_logp_difference/mean", "|logp diff|",
              extra=("sampling/sampling_logp_difference/max", "max")),
        Panel("step time split", STEP_PARTS[0][0], "seconds", stack=STEP_PARTS),
    ]
    present = set(keys)
    return [panel for panel in candidates if panel.key in present]


def build_figures(records: Sequence[dict[str, Any]], evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"rewards": Figure, "training": Figure}` for the metric records (and an eval.json's content, drawn
    after the rewards), leaving out a figure with no panels."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    rewards = reward_panels(keys)
    held_out = evaluation_panel(evaluation) if evaluation else None
    if held_out is not None:
        rewards.append(held_out)
    figures = {}
    for name, panels in (("rewards", rewards), ("training", training_panels(keys))):
        if panels:
            figures[name] = _figure(records, panels)
    return figures


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the run's PNGs (default into RUN_DIR/plots) and return their paths.

    Raises GrpoR1Error when the run folder has no metrics.jsonl or it holds no training step.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise GrpoR1Error(f"{str(path)!r} does not exist; pass a run folder written by python -m grpo_r1.train")
    records = [r for r in read_metrics(run_dir) if "step" in r]
    figures = build_figures(records, _read_evaluation(run_dir / EVAL_FILE))
    if not figures:
        raise GrpoR1Error(f"{str(path)!r} holds no training metrics yet; plot the run after its first logged step")
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        target = out / f"{name}.png"
        figure.savefig(target, dpi=100)
        written.append(target)
    return written


def _read_evaluation(path: Path) -> dict[str, Any] | None:
    """An eval.json's content, or None when there is none (or it is not an evaluation)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _figure(records: Sequence[dict[str, Any]], panels: Sequence[Panel]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = math.ceil(len(panels) / COLUMNS)
    cols = min(COLUMNS, len(panels))
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        ax = figure.add_subplot(rows, cols, index + 1)
        _draw(ax, records, panel)
    return figure


def _draw(ax: Any, records: Sequence[dict[str, Any]], panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator

    if panel.bars is not None:
        _draw_bars(ax, panel)
        return
    steps, values = _series(records, "step"), _series(records, panel.key)
    marker = "o" if len(records) <= 30 else None
    if panel.stack:
        parts = [[0.0 if math.isnan(v) else v for v in _series(records, key)] for key, _ in panel.stack]
        ax.stackplot(steps, *parts, labels=[label for _, label in panel.stack], alpha=0.8)
        ax.legend(fontsize="small", loc="upper right")
    else:
        smooth = panel.smooth and len(records) >= 6
        ax.plot(steps, values, marker=marker, markersize=3, alpha=0.45 if smooth else 1.0,
                label="per step" if smooth else panel.key.rsplit("/", 1)[-1] if panel.extra else None)
        if smooth:
            window = smoothing_window(len(records))
            ax.plot(steps, rolling_mean(values, window), linewidth=2, label=f"mean of {window} steps")
            ax.legend(fontsize="small")
    if panel.band is not None:
        low_key, high_key = panel.band
        if low_key == "-std":
            spread = _series(records, high_key)
            low = [v - s for v, s in zip(values, spread, strict=True)]
            high = [v + s for v, s in zip(values, spread, strict=True)]
            if all(math.isnan(v) or v >= 0 for v in values):  # a reward that never went below 0 cannot
                low = [v if math.isnan(v) else max(v, 0.0) for v in low]
        else:
            low, high = _series(records, low_key), _series(records, high_key)
        if any(not math.isnan(v) for v in low + high):
            ax.fill_between(steps, low, high, alpha=0.25, linewidth=0)
    if panel.extra is not None and any(panel.extra[0] in r for r in records):
        ax.plot(steps, _series(records, panel.extra[0]), linestyle="--", marker=marker, markersize=3,
                label=panel.extra[1])
        ax.legend(fontsize="small")
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)


def _draw_bars(ax: Any, panel: Panel) -> None:
    """Grouped bars: one group per metric, one bar per model, each labelled with its value."""
    assert panel.bars is not None
    models = list(panel.bars)
    labels = list(dict.fromkeys(label for values in panel.bars.values() for label in values))
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        positions = [position + index * width for position in range(len(labels))]
        heights = [panel.bars[model].get(label, 0.0) for label in labels]
        container = ax.bar(positions, heights, width, label=model)
        ax.bar_label(container, fmt="%.2f", fontsize="small")
    ax.set_xticks([position + width * (len(models) - 1) / 2 for position in range(len(labels))], labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")


def _series(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The key's value per record as floats, NaN where it is missing or null (a gap in the line)."""
    out = []
    for record in records:
        value = record.get(key)
        out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan)
    return out
