"""Completions with their rewards, logged every N steps into one W&B table that keeps its history."""

import json
from collections import defaultdict, deque
from types import SimpleNamespace

from grpo_r1.trainer.completions_log import CompletionsLogCallback, completion_rows


def _fake_trainer():
    """What GRPOTrainer (TRL 1.14.2) keeps of its latest generation batch: two groups of two."""
    import torch

    return SimpleNamespace(
        _logs={
            "prompt": deque(["p1", "p1", "p2", "p2"]),
            "completion": deque(["a", "b", "c", "d"]),
            "rewards": defaultdict(deque, {"fmt": deque([0.5, 0.0, float("nan"), 1.0]),
                                            "ok": deque([2.0, float("nan"), 0.0, 0.0])}),
            "advantages": deque([1.0, -1.0, 0.5, -0.5]),
        },
        reward_func_names=["fmt", "ok"],
        reward_weights=torch.tensor([1.0, 0.5]),
        num_generations=2,
    )


def _state(step):
    return SimpleNamespace(global_step=step, is_world_process_zero=True)


def test_rows_hold_each_reward_the_weighted_total_and_the_advantage():
    rows = completion_rows(_fake_trainer(), step=3)
    assert rows == [  # one group by default
        {"step": 3, "prompt": "p1", "completion": "a", "reward": 0.5 + 0.5 * 2.0, "rewards/fmt": 0.5, "rewards/ok": 2.0,
         "advantage": 1.0},
        {"step": 3, "prompt": "p1", "completion": "b", "reward": 0.0, "rewards/fmt": 0.0, "rewards/ok": None,
         "advantage": -1.0},
    ]
    assert [r["completion"] for r in completion_rows(_fake_trainer(), 3, limit=10)] == ["a", "b", "c", "d"]


def test_every_nth_step_goes_to_completions_jsonl_once(tmp_path):
    callback = CompletionsLogCallback(_fake_trainer(), every=2, run_dir=tmp_path)
    args = SimpleNamespace(report_to=[])
    for step in (0, 1, 2, 3, 4, 4):  # the end-of-training log repeats the last step
        callback.on_log(args, _state(step), None, logs={"loss": 0.0})
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 4, 4]
    off = CompletionsLogCallback(_fake_trainer(), every=0, run_dir=tmp_path / "off")
    off.on_log(args, _state(2), None, logs={})
    assert not (tmp_path / "off").exists()


def test_wandb_keeps_every_logged_step_under_one_key(tmp_path, monkeypatch):
    import wandb

    from tests.wandb_files import read_offline_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="grpo_r1-test", dir=str(tmp_path), mode="offline", reinit="finish_previous")
    try:
        callback = CompletionsLogCallback(_fake_trainer(), every=1)
        for step in (1, 2):
            callback.on_log(SimpleNamespace(report_to=["wandb"]), _state(step), None, logs={"loss": 0.0})
    finally:
        run.finish()
        wandb.teardown()  # W&B's service writes the run file asynchronously; this waits for it
    offline = next((tmp_path / "wandb").glob("offline-run-*"))
    history = read_offline_run(next(offline.glob("run-*.wandb")))
    assert "completions/history._type" in history.history_keys and "train/global_step" in history.history_keys
    # INCREMENTAL mode: one file per log, each holding only that log's rows, all under the one key.
    increments = sorted((offline / "files" / "media" / "table" / "completions").glob("history_*.table.json"))
    tables = [json.loads(path.read_text()) for path in increments]
    assert [row[0] for table in tables for row in table["data"]] == [1, 1, 2, 2]
    assert tables[0]["columns"] == ["step", "prompt", "completion", "reward", "rewards/fmt", "rewards/ok", "advantage"]
