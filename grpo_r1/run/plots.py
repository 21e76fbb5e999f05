"""Training curves of a run as PNG files (`python -m grpo_r1.plot RUN_DIR` draws them again).

Reads `RUN_DIR/metrics.jsonl` (one record per logged step, written by the trainer) and writes

    RUN_DIR/plots/rewards.png   the total reward, then each reward function: mean with a +-1 std band
    RUN_DIR/plots/training.png  KL, loss, completion length (min-max band), truncation rate,
                                learning rate, gradient norm, share of groups whose rewards are all
                                equal (no GRPO signal), and the engine/trainer logprob gap when the
                                engine logs it

A panel appears only when its metric was logged. `plot_run(run_dir)` does the same from Python
(training calls it at the end of a run); `build_figures(records)` returns the figures without
writing them. Figures are drawn with matplotlib's Agg canvas, never pyplot, so nothing here
needs a display or changes the backend of a notebook that imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_r1.errors import GrpoR1Error
from grpo_r1.run.tracking import METRICS_FILE, read_metrics

PLOTS_DIR = "plots"
COLUMNS = 3


@dataclass
class Panel:
    """One subplot: a line for `key` over steps, with an optional band between two other series."""

    title: str
    key: str
    ylabel: str = ""
    band: tuple[str, str] | None = None  # ("low key", "high key"), or ("-std", key) for mean +- std
    extra: tuple[str, str] | None = None  # (key, label) of a second, dashed line


def reward_panels(keys: Sequence[str]) -> list[Panel]:
    """The total reward, then one panel per reward function, in the order they were logged."""
    panels = [Panel("total reward", "reward", "reward", band=("-std", "reward_std"))] if "reward" in keys else []
    for key in keys:
        if key.startswith("rewards/") and key.endswith("/mean"):
            name = key[len("rewards/"):-len("/mean")]
            panels.append(Panel(f"reward: {name}", key, "reward", band=("-std", f"rewards/{name}/std")))
    return panels


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
    ]
    present = set(keys)
    return [panel for panel in candidates if panel.key in present]


def build_figures(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`{"rewards": Figure, "training": Figure}` for the metric records, leaving out a figure with no panels."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    figures = {}
    for name, panels in (("rewards", reward_panels(keys)), ("training", training_panels(keys))):
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
    figures = build_figures(records)
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

    steps, values = _series(records, "step"), _series(records, panel.key)
    marker = "o" if len(records) <= 30 else None
    ax.plot(steps, values, marker=marker, markersize=3, label=panel.key.rsplit("/", 1)[-1] if panel.extra else None)
    if panel.band is not None:
        low_key, high_key = panel.band
        if low_key == "-std":
            spread = _series(records, high_key)
            low = [v - s for v, s in zip(values, spread, strict=True)]
            high = [v + s for v, s in zip(values, spread, strict=True)]
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


def _series(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The key's value per record as floats, NaN where it is missing or null (a gap in the line)."""
    out = []
    for record in records:
        value = record.get(key)
        out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan)
    return out
