"""Read a W&B offline run back with W&B's own reader, `wandb leet inspect --json` (W&B 0.31+),
which prints each record of the run's .wandb file as one JSON line."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

WANDB = Path(sys.executable).parent / "wandb"  # the venv's command line, of the wandb the run used


@dataclass
class OfflineRun:
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    history_keys: set[str] = field(default_factory=set)
    # Each wandb.log call: key -> value (a nested value's keys joined with ".", e.g. "completions/history._type").
    history: list[dict] = field(default_factory=list)


def read_offline_run(path: Path) -> OfflineRun:
    """The run of a .wandb file or an offline-run-* folder. A file cut short (a killed run) reads up to its end."""
    proc = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"wandb leet inspect {path}: exit status {proc.returncode}\n{proc.stderr[-2000:]}"
    run = OfflineRun()
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if record["type"] == "run":
            info = record["run"]
            run.project, run.name = info.get("project", ""), info.get("display_name", "")
            run.tags = info.get("tags", [])
        elif record["type"] == "history":
            row = record["history"].get("item", {})
            run.history_keys.update(row)
            run.history.append(row)
    return run
