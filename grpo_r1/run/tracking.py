"""Where a run's metrics go: metrics.jsonl in the run folder always, and the trackers that
logging.report_to names (W&B, TensorBoard, Trackio, MLflow), through transformers' integrations.

`MetricsFileCallback` writes one JSON line per logged step, holding every metric TRL logged
(loss, KL, reward, each reward function's mean and std, completion lengths, ...).
`check_reporters` refuses, before the model loads, a tracker whose package is not installed.
`start_wandb` starts the W&B run before the trainer does, so the recipe's project, run name and
tags apply and its files land in the run folder; transformers' W&B callback then reuses it.
`log_tensorboard_into` points transformers' TensorBoard callback at <run folder>/tensorboard.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from grpo_r1.errors import RecipeError
from grpo_r1.recipe import LoggingConfig

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_run_id"
TENSORBOARD_DIR = "tensorboard"

# Each tracker of logging.report_to: the modules transformers' integration can log through (any one
# will do), and what to pip install for it.
REPORTER_PACKAGES = {
    "wandb": (("wandb",), "wandb"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "trackio": (("trackio",), "trackio"),
    "mlflow": (("mlflow",), "mlflow"),
}


class MetricsFileCallback(TrainerCallback):
    """Append each training log (one per logged step) as a JSON line to `run_dir/metrics.jsonl`;
    the end-of-training summary goes to `summary.json` instead.

    The summary covers this `train` call. After a `--resume` that is the part from the checkpoint
    on: `first_step` says where it began (0 for a run that was never resumed), `train_runtime` is
    that part's wall time, and the throughput figures are over its steps (transformers divides
    the run's whole length by the part's time). `train_loss` is the mean logged loss of every step
    in metrics.jsonl, which keeps each step once across the parts.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step  # after a resume: the checkpoint's step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        if "train_runtime" in logs:
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(self._summary(record, state), indent=2) + "\n")
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _summary(self, record: dict[str, Any], state: Any) -> dict[str, Any]:
        steps = state.global_step - self.first_step
        summary = {"step": record["step"], "first_step": self.first_step, **record}
        if self.first_step and state.max_steps and record.get("train_runtime"):
            share = steps / state.max_steps
            for key in ("train_samples_per_second", "train_steps_per_second"):
                if isinstance(record.get(key), (int, float)):
                    summary[key] = round(record[key] * share, 3)
            losses = [r["loss"] for r in read_metrics(self.run_dir) if isinstance(r.get("loss"), (int, float))]
            if losses:
                summary["train_loss"] = sum(losses) / len(losses)
        return summary


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def wandb_mode(cfg: LoggingConfig) -> str:
    """online/offline/disabled: the recipe's choice, else $WANDB_MODE, else online only with an API key."""
    if cfg.wandb_mode:
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_wandb_key() else "offline"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def check_reporters(cfg: LoggingConfig) -> None:
    """Refuse a tracker of logging.report_to whose package is not installed here, naming the pip command."""
    for name in cfg.reporters:
        modules, package = REPORTER_PACKAGES[name]
        if not any(importlib.util.find_spec(module) for module in modules):
            raise RecipeError(f"logging.report_to names {name}, but {package} is not installed here; install it with "
                              f"`pip install {package}`, or take {name} out of logging.report_to")


def log_tensorboard_into(trainer: Any, run_dir: Path) -> None:
    """Point transformers' TensorBoard callback (there when logging.report_to has tensorboard) at
    <run_dir>/tensorboard; left alone it writes into <output_dir>/runs/<date>_<host>, and
    transformers 5 has no TrainingArguments.logging_dir any more. It makes the folder and its event
    files at the start of training, on the main process only."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(Path(run_dir) / TENSORBOARD_DIR)


def start_wandb(cfg: LoggingConfig, run_name: str, run_dir: Path, config: dict[str, Any], resume: bool = False) -> Any:
    """Start the W&B run for this training run, or return None when logging.report_to does not name wandb.

    The run's id is kept in `run_dir/wandb_run_id`; with `resume`, the run of that id continues
    (offline, W&B writes a second offline-run-*-<id> folder, and `wandb sync` uploads them in order).
    """
    if "wandb" not in cfg.reporters:
        return None
    import wandb

    mode = wandb_mode(cfg)
    if mode == "offline" and not os.environ.get("WANDB_MODE") and not cfg.wandb_mode:
        logger.info("W&B has no API key here, logging offline into %s/wandb (upload later with `wandb sync`)", run_dir)
    id_file = Path(run_dir) / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    # W&B would otherwise advertise Weave (it sees openai imported by vLLM) and end the run with a
    # sparkline table of every metric; quiet keeps its header (where the files are) and warnings.
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    run = wandb.init(project=cfg.project, name=run_name, tags=list(cfg.tags), config=config, dir=str(run_dir),
                     mode=mode, reinit="finish_previous", id=run_id, resume="allow" if run_id else None,
                     settings=wandb.Settings(quiet=True))
    if run is not None and getattr(run, "id", None):
        id_file.write_text(run.id + "\n")
    return run
