"""quickstart.ipynb runs end to end on a CPU: it trains (a 4-step cold start, then 2 GRPO steps), plots
and evaluates for real (about two minutes on two cores). The GPU notebook: tests/unit/test_notebook_gpu.py.
"""

import json
import os
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


def _outputs(notebook, kind):
    """Every text (kind "text") or PNG (kind "image/png") output of the executed notebook, in order."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "text" and output.get("output_type") == "stream":
                found.append(output["text"])
            elif kind == "text" and "text/plain" in output.get("data", {}):
                found.append(output["data"]["text/plain"])
            elif kind in output.get("data", {}):
                found.append(output["data"][kind])
    return found


def test_quickstart_trains_plots_and_evaluates(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("GRPO_R1_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on any cell error

    text = "".join(_outputs(notebook, "text"))
    assert "ends_with_number" in text  # the custom reward is in the recipe and the reward table
    assert "cold start step 4/4" in text and "2 steps; run folder" in text
    assert len(_outputs(notebook, "image/png")) == 2  # rewards.png and training.png shown
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "base", "adapter"]

    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "cold_start" / "adapter" / "adapter_config.json").is_file()
    assert len((run / "cold_start" / "metrics.jsonl").read_text().splitlines()) == 4
    assert (run / "plots" / "rewards.png").is_file() and (run / "plots" / "training.png").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/ends_with_number/mean" in metrics[0]
    report = json.loads((run / "eval.json").read_text())
    assert report["settings"]["questions"] == 8 and set(report["metrics"]) == {"base", "adapter"}
