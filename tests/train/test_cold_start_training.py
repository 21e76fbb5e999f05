"""The cold start's supervised steps on the real SmolLM2 (its targets and checks: tests/unit/test_cold_start.py)."""

from __future__ import annotations

import json

import torch

from grpo_r1.data import load_questions
from grpo_r1.recipe import ColdStartConfig, DataConfig
from grpo_r1.trainer.cold_start import run_cold_start


def test_cold_start_lowers_the_loss_trains_only_the_adapter_and_saves_it(smollm2_loaded, tmp_path):
    dataset = load_questions(DataConfig(source="arithmetic", arithmetic_examples=40, arithmetic_max_ops=1), seed=0)
    model = smollm2_loaded.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad and "layers.0." in n}
    config = ColdStartConfig(steps=6, batch_size=4, examples=4, learning_rate=1e-3)
    records = run_cold_start(model, smollm2_loaded.tokenizer, dataset, config, seed=0, run_dir=tmp_path)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]  # the same 4 examples over and over: memorised
    lines = [json.loads(line) for line in (tmp_path / "cold_start" / "metrics.jsonl").read_text().splitlines()]
    assert lines == records
    assert (tmp_path / "cold_start" / "adapter" / "adapter_model.safetensors").is_file()
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_processes_that_do_not_write_train_the_same_and_leave_no_files(smollm2_loaded, tmp_path, caplog):
    dataset = load_questions(DataConfig(source="arithmetic", arithmetic_examples=8, arithmetic_max_ops=1), seed=0)
    with caplog.at_level("INFO", logger="grpo_r1"):
        records = run_cold_start(smollm2_loaded.model, smollm2_loaded.tokenizer, dataset,
                                 ColdStartConfig(steps=1, batch_size=2), seed=0, run_dir=tmp_path, write_files=False)
    assert len(records) == 1 and not (tmp_path / "cold_start").exists()
    assert not [r for r in caplog.records if r.name.startswith("grpo_r1")], "a non-writing process logged"
