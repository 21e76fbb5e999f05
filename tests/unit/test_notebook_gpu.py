"""qwen3b_gpu.ipynb needs a CUDA GPU and Qwen2.5-3B and is never executed here: it is at least valid
(the CPU quickstart runs end to end in tests/train/test_notebooks.py)."""

from __future__ import annotations

import ast

import nbformat

from tests.helpers import ROOT

NOTEBOOKS = ROOT / "notebooks"


def test_qwen3b_notebook_is_valid_and_says_it_is_unverified():
    notebook = nbformat.read(NOTEBOOKS / "qwen3b_gpu.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert "unverified" in notebook.cells[0].source.lower()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            # Shell (!pip) and magic (%) lines are IPython's; the rest must be Python.
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("!", "%")))
            ast.parse(source)
    assert "recipes/qwen3b_gsm8k.yaml" in "".join(cell.source for cell in notebook.cells)
