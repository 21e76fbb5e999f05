"""Sample completions with their rewards, logged every N steps so that their history is kept.

TRL's own `log_completions` logs one W&B table under the key "completions" and replaces it at
every log (trl#2045): only the last step's samples survive. `CompletionsLogCallback` instead
adds rows to one W&B table in INCREMENTAL mode (every log appends, all steps stay browsable
under the single key `completions/history`) and, given a run folder, appends the same rows to
`completions.jsonl` there, which needs no W&B at all.

Each row: step, prompt, completion, the weighted total reward, each reward function's score
(`rewards/<name>`, as the metrics name them) and the GRPO advantage. Rows come from the
trainer's record of its latest generation batch (grpo_r1.trainer.trl_private.latest_batch); by default
one whole group (`num_generations` completions of one prompt), so the rewards and advantages
within a group can be compared.

    trainer.add_callback(CompletionsLogCallback(trainer, every=10, run_dir=run_dir))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from grpo_r1.trainer import trl_private

COMPLETIONS_FILE = "completions.jsonl"
WANDB_KEY = "completions/history"


class CompletionsLogCallback(TrainerCallback):
    """Every `every` optimizer steps, log `rows` completions of the latest batch with their rewards.

    Args:
        trainer: the GRPOTrainer whose completions are logged (read at each log, so add the
            callback after building the trainer: `trainer.add_callback(...)`).
        every: log at steps that are multiples of this; 0 logs nothing.
        rows: completions per log; None means one group (the trainer's num_generations).
        run_dir: when given, rows are also appended to `run_dir/completions.jsonl`.
        key: the W&B key of the table.
    """

    def __init__(self, trainer: Any, every: int, rows: int | None = None, run_dir: str | Path | None = None,
                 key: str = WANDB_KEY):
        if every < 0:
            raise ValueError(f"every must be 0 (off) or a number of steps, got {every}")
        self.trainer = trainer
        self.every = every
        self.rows = rows
        self.path = Path(run_dir) / COMPLETIONS_FILE if run_dir is not None else None
        self.key = key
        self._table: Any = None
        self._columns: list[str] | None = None
        self._last_step = -1

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        if (not self.every or not state.is_world_process_zero or step <= 0 or step % self.every
                or step == self._last_step):
            return
        rows = completion_rows(self.trainer, step, self.rows)
        if not rows:
            return
        self._last_step = step
        if self.path is not None:
            with open(self.path, "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        if "wandb" in (args.report_to or []):
            self._log_wandb(rows, step)

    def _log_wandb(self, rows: list[dict[str, Any]], step: int) -> None:
        import wandb

        if wandb.run is None:
            return
        if self._table is None:
            self._columns = list(rows[0])
            self._table = wandb.Table(columns=self._columns, log_mode="INCREMENTAL")
        for row in rows:
            self._table.add_data(*(row.get(column) for column in self._columns))
        wandb.log({self.key: self._table, "train/global_step": step})


def completion_rows(trainer: Any, step: int, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` completions (default one group) of the trainer's latest batch, as plain dicts.

    Keys: step, prompt, completion, reward (the weighted total), `rewards/<name>` per reward
    function (None where it returned None), advantage.
    """
    logs = trl_private.latest_batch(trainer)
    prompts, completions = list(logs["prompt"]), list(logs["completion"])
    names = list(trainer.reward_func_names)
    scores = {name: list(logs["rewards"].get(name, [])) for name in names}
    advantages = list(logs["advantages"])
    weights = ([float(w) for w in trainer.reward_weights.tolist()] if hasattr(trainer, "reward_weights")
               else [1.0] * len(names))
    if limit is None:
        limit = getattr(trainer, "num_generations", None) or len(completions)
    rows = []
    for index in range(min(limit, len(completions))):
        per_reward = {f"rewards/{name}": _number(scores[name][index]) if index < len(scores[name]) else None
                      for name in names}
        total = sum(weight * value for weight, value in zip(weights, per_reward.values(), strict=True)
                    if value is not None)
        rows.append({
            "step": step,
            "prompt": prompts[index] if index < len(prompts) else None,
            "completion": completions[index],
            "reward": total,
            **per_reward,
            "advantage": _number(advantages[index]) if index < len(advantages) else None,
        })
    return rows


def _number(value: Any) -> float | None:
    """A float for JSON and W&B; NaN (a reward that returned None) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value
