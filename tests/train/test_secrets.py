"""Secrets: a W&B API key or hub token in the environment never reaches the run folder or the logs.

The shared training run (tests/train/conftest.py: a 1-step cold start then 2 GRPO steps, W&B
offline) runs with distinctive fake values in WANDB_API_KEY, HF_TOKEN and HUGGING_FACE_HUB_TOKEN;
then every file under the run folder (recipe.yaml, metrics, completions.jsonl, checkpoints, the
adapter and the cold start's, W&B's binary run file with its record of the machine and command,
its console copy and debug logs) and the command's stdout and stderr are searched for them, as text
and as the bytes of each encoding a file could hold them in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CPU_RECIPE
from tests.train.conftest import RUN_NAME, SECRETS


def _encodings(secret: str) -> list[bytes]:
    """The byte strings under which `secret` could sit in a file: UTF-8, UTF-16 (either order), and
    the core of it (a prefix-free slice, so a truncated or split copy is still found)."""
    core = secret[-20:]
    return [secret.encode(), secret.encode("utf-16-le"), secret.encode("utf-16-be"), core.encode()]


def _files_holding(folder: Path, secret: str) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            if any(pattern in raw for pattern in _encodings(secret)):
                hits.append(str(path.relative_to(folder)))
    return hits


def test_the_run_wrote_what_is_searched(shared_run):
    """The search below means something only if the run wrote every kind of file it covers."""
    run_dir = shared_run.run_dir
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert "recipe.yaml" in names and "metrics.jsonl" in names and "completions.jsonl" in names
    assert any(n.startswith("adapter/") for n in names)
    assert "cold_start/metrics.jsonl" in names and any(n.startswith("cold_start/adapter/") for n in names)
    assert any(n.startswith("checkpoints/checkpoint-1/") for n in names)
    assert any(n.endswith(".wandb") for n in names), "W&B's offline run file"
    assert any(n.endswith("output.log") for n in names), "W&B's copy of the console"
    assert any(n.endswith("debug.log") for n in names), "W&B's debug log"
    # The search reads W&B's binary records: the run name, passed the same way, is found in them.
    holding_name = _files_holding(run_dir, RUN_NAME)
    assert any(n.endswith(".wandb") for n in holding_name) and "recipe.yaml" in holding_name, holding_name


@pytest.mark.parametrize("variable", list(SECRETS))
def test_no_secret_in_the_run_folder(shared_run, variable):
    written = _files_holding(shared_run.run_dir, SECRETS[variable])
    assert written == [], f"{variable}'s value was written into the run folder"


@pytest.mark.parametrize("variable", list(SECRETS))
def test_no_secret_in_the_console_output(shared_run, variable):
    proc = shared_run.proc
    core = SECRETS[variable][-20:]
    assert core not in proc.stdout and core not in proc.stderr, f"{variable}'s value was printed"


def test_a_token_in_the_recipe_is_refused_without_echoing_it(tmp_path, capfd):
    """A recipe is saved in the run folder and W&B's config, so it may hold no token at all; the
    refusal names the environment variable to use and does not repeat the token."""
    from grpo_r1.train import main

    token = SECRETS["HF_TOKEN"]
    code = main([str(CPU_RECIPE), f"run.output_dir={tmp_path / 'run'}", f"training.hub_token={token}"])
    out, err = capfd.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "'training.hub_token'" in err and "HF_TOKEN" in err
    assert token not in err and token not in out
    assert not (tmp_path / "run").exists()
