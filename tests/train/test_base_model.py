"""A base model (a tokenizer without a chat template) trains with model.chat_template=plain: the cold
start teaches the plain format, GRPO samples in it, and the adapter's tokenizer keeps the template,
so chat and evaluate format prompts the same way."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import CPU_RECIPE, ROOT
from tests.unit.test_bad_input import TINY, base_model_folder


def test_a_base_model_trains_in_the_plain_format(tmp_path):
    folder = base_model_folder(tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, "cold_start.steps=2",
         f"model.name_or_path={folder}", "model.chat_template=plain", f"run.output_dir={run_dir}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 1 steps in" in proc.stdout
    saved = (run_dir / "adapter" / "chat_template.jinja").read_text()
    assert "'Question: '" in saved and "'Answer: '" in saved
