"""Where a run's metrics go: metrics.jsonl in the run folder always, W&B when the recipe asks.

`MetricsFileCallback` writes one JSON line per logged step, holding every metric TRL logged
(loss, KL, reward, each reward function's mean and std, completion lengths, ...).
`start_wandb` starts the W&B run before the trainer does, so the recipe's project, run name and
tags apply and its files land in the run folder; transformers' W&B callback then reuses it.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from grpo_r1.recipe import LoggingConfig

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_run_id"


class MetricsFileCallback(TrainerCallback):
    """Append each training log (one per logged step) as a JSON line to `run_dir/metrics.jsonl`;
    the end-of-training summary goes to `summary.json` instead."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        if "train_runtime" in logs:
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(record, indent=2) + "\n")
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


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


def start_wandb(cfg: LoggingConfig, run_name: str, run_dir: Path, config: dict[str, Any], resume: bool = False) -> Any:
    """Start the W&B run for this training run, or return None when logging.report_to is 'none'.

    The run's id is kept in `run_dir/wandb_run_id`; with `resume`, the run of that id continues
    (offline, W&B writes a second offline-run-*-<id> folder, and `wandb sync` uploads them in order).
    """
    if cfg.report_to != "wandb":
        return None
    import wandb

    mode = wandb_mode(cfg)
    if mode == "offline" and not os.environ.get("WANDB_MODE") and not cfg.wandb_mode:
        logger.info("W&B has no API key here, logging offline into %s/wandb (upload later with `wandb sync`)", run_dir)
    id_file = Path(run_dir) / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    run = wandb.init(project=cfg.project, name=run_name, tags=list(cfg.tags), config=config, dir=str(run_dir),
                     mode=mode, reinit="finish_previous", id=run_id, resume="allow" if run_id else None)
    if run is not None and getattr(run, "id", None):
        id_file.write_text(run.id + "\n")
    return run
