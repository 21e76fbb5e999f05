"""Secrets: a W&B API key or hub token in the environment never reaches the run folder or the logs.

One real tiny training (CPU, a 1-step cold start then 2 GRPO steps, W&B offline) runs with distinctive
fake values in WANDB_API_KEY, HF_TOKEN and HUGGING_FACE_HUB_TOKEN; then every file under the run folder
(recipe.yaml, metrics, completions.jsonl, checkpoints, the adapter and the cold start's, W&B's binary run file
with its record of the machine and command, its console copy and debug logs) and the command's stdout and stderr are searched for them, as
text and as the bytes of each encoding a file could hold them in. The run is hermetic: W&B is
offline (a fake key must never go online) and the hub is offline.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CPU_RECIPE = ROOT / "recipes" / "smollm2_gsm8k_cpu.yaml"

_MARK = uuid.uuid4().hex[:12]
SECRETS = {
    "WANDB_API_KEY": f"wandbfakekey{_MARK}" + "0" * 16,  # W&B keys are 40 characters
    "HF_TOKEN": f"hf_FakeHubToken{_MARK}",
    "HUGGING_FACE_HUB_TOKEN": f"hf_FakeLegacyToken{_MARK}",
}


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


@pytest.fixture(scope="module")
def run_with_secrets(tmp_path_factory):
    work = tmp_path_factory.mktemp("secrets")
    run_dir = work / "run"
    env = {
        **os.environ,
        **SECRETS,
        "WANDB_MODE": "offline",  # the fake key must never be sent anywhere
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    cmd = [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), f"run.output_dir={run_dir}",
           "training.max_steps=2", "training.save_steps=1", "generation.max_completion_length=16",
           "generation.num_generations=2", "training.per_device_train_batch_size=2",
           "cold_start.steps=1", "cold_start.batch_size=2",  # its adapter and metrics are searched too
           "logging.completions_every=1", "logging.run_name=secrets-test"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


pytestmark = pytest.mark.slow


def test_the_run_wrote_what_is_searched(run_with_secrets):
    """The search below means something only if the run wrote every kind of file it covers."""
    run_dir, _ = run_with_secrets
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert "recipe.yaml" in names and "metrics.jsonl" in names and "completions.jsonl" in names
    assert any(n.startswith("adapter/") for n in names)
    assert "cold_start/metrics.jsonl" in names and any(n.startswith("cold_start/adapter/") for n in names)
    assert any(n.startswith("checkpoints/checkpoint-1/") for n in names)
    assert any(n.endswith(".wandb") for n in names), "W&B's offline run file"
    assert any(n.endswith("output.log") for n in names), "W&B's copy of the console"
    assert any(n.endswith("debug.log") for n in names), "W&B's debug log"
    # The search reads W&B's binary records: the run name, passed the same way, is found in them.
    holding_name = _files_holding(run_dir, "secrets-test")
    assert any(n.endswith(".wandb") for n in holding_name) and "recipe.yaml" in holding_name, holding_name


@pytest.mark.parametrize("variable", list(SECRETS))
def test_no_secret_in_the_run_folder(run_with_secrets, variable):
    run_dir, _ = run_with_secrets
    assert _files_holding(run_dir, SECRETS[variable]) == [], f"{variable}'s value was written into the run folder"


@pytest.mark.parametrize("variable", list(SECRETS))
def test_no_secret_in_the_console_output(run_with_secrets, variable):
    _, proc = run_with_secrets
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
