"""The bad-input catalogue: every mistake a user makes gets one line that names the fix, and no run folder.

Each case runs the real command line (`grpo_r1.train.main`, in-process, with the process's
stdout and stderr captured at the file-descriptor level, so a library writing to the terminal
behind Python's back is caught too) and checks:

    exit status 2
    stderr is exactly one line, starting "error: ", with no traceback
    the line names what to fix (the key, file or function)
    the run folder does not exist afterwards (or, where one existed, is unchanged)
    for input that is wrong on its face, no model was loaded

A few cases need a separate process (the hub's offline switch is read at import time), and the
full-disk case trains for real (in `test_disk_full_when_saving_*`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from grpo_r1 import train as train_module
from tests.helpers import CPU_RECIPE, ROOT

# Every case runs the CPU recipe at its smallest (no cold start), so a case that wrongly starts training stays short.
TINY = ["training.max_steps=1", "generation.max_completion_length=16", "generation.num_generations=2",
        "training.per_device_train_batch_size=2", "cold_start.steps=0", "logging.report_to=none"]

GOOD_ROW = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"}
MY_REWARDS = '''
import math

def fine(prompts, completions, **kwargs):
    return [0.0 for _ in completions]

def needs_difficulty(prompts, completions, difficulty, **kwargs):
    return [0.0 for _ in completions]

def raises(prompts, completions, **kwargs):
    return [1.0 / (len(c[0]["content"]) * 0) for c in completions]

def one_short(prompts, completions, **kwargs):
    return [0.0 for _ in completions][1:]

def nan_reward(prompts, completions, **kwargs):
    return [math.nan for _ in completions]

def hangs(prompts, completions, **kwargs):
    import time
    time.sleep(3600)  # a service that never answers
    return [0.0 for _ in completions]
'''


@dataclass
class Case:
    """One mistake. `{tmp}` in `recipe`, `args` and `files` stands for the test's own folder."""

    id: str
    args: list[str]
    expect: list[str]  # each must appear in the error line
    recipe: str = str(CPU_RECIPE)
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under {tmp} first
    before_model: bool = True  # the refusal comes before any model is loaded
    no_gpu: bool = False  # the refusal is for machines without a CUDA GPU
    setup: Callable[[pytest.MonkeyPatch], None] | None = None


def _without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM as if not installed: a None entry in sys.modules is how Python marks a module unimportable."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def _without_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)


CASES = [
    # --- the recipe file and its keys
    Case("yaml-tab-indent", [], ["recipe.yaml", "line 2", "spaces", "tabs"], recipe="{tmp}/recipe.yaml",
         files={"recipe.yaml": "model:\n\tname_or_path: smollm2-135m\n"}),
    Case("yaml-unclosed-bracket", [], ["recipe.yaml", "not valid YAML", "starts at line 3"], recipe="{tmp}/recipe.yaml",
         files={"recipe.yaml": "lora:\n  r: 8\nmodel: {name_or_path: [smollm2-135m\n"}),
    Case("yaml-not-a-mapping", [], ["recipe.yaml", "mapping of sections"], recipe="{tmp}/recipe.yaml",
         files={"recipe.yaml": "- model\n- lora\n"}),
    Case("recipe-not-utf8", [], ["recipe.yaml", "UTF-8"], recipe="{tmp}/recipe.yaml",
         # as some Windows editors save
         files={"recipe.yaml": "model:\n  name_or_path: smollm2-135m\n".encode("utf-16")}),
    Case("recipe-file-missing", [], ["nope.yaml", "does not exist"], recipe="{tmp}/nope.yaml"),
    Case("unknown-section-in-file", [], ["'trainin'", "did you mean 'training'"], recipe="{tmp}/recipe.yaml",
         files={"recipe.yaml": "trainin:\n  max_steps: 1\n"}),
    Case("unknown-key-override", ["lora.rank=8"], ["'lora.rank'", "r, alpha"]),
    Case("unknown-training-key", ["training.max_step=1"], ["'training.max_step'", "did you mean 'training.max_steps'"]),
    Case("wrong-type", ["training.max_steps=five"], ["'training.max_steps' must be an integer", "'five'"]),
    Case("wrong-type-list", ["lora.target_modules=q_proj"], ["'lora.target_modules' must be a list"]),
    Case("override-without-value", ["training.max_steps"], ["'training.max_steps'", "section.key=value"]),
    Case("key-owned-by-another-section", ["training.num_generations=4"], ["'generation.num_generations'"]),
    # --- the trackers
    Case("reporter-misspelt", ["logging.report_to=[wandb, tensorbord]"],
         ["'logging.report_to'", "'tensorbord'", "did you mean 'tensorboard'", "wandb, tensorboard, trackio, mlflow"]),
    Case("reporter-none-with-another", ["logging.report_to=[none, tensorboard]"],
         ["'logging.report_to'", "'none' together with 'tensorboard'"]),
    Case("reporter-not-installed", ["logging.report_to=[tensorboard, mlflow]"],
         ["logging.report_to", "mlflow", "pip install mlflow"], setup=_without_mlflow),
    # --- the model
    Case("model-folder-missing", ["model.name_or_path=./no/such/model"],
         ["model.name_or_path", "./no/such/model", "smollm2-135m"]),
    Case("model-folder-not-a-model", ["model.name_or_path={tmp}/empty_model"], ["model.name_or_path", "config.json"],
         files={"empty_model/notes.txt": "not a model"}),
    Case("tokenizer-folder-missing", ["model.tokenizer=./no/such/tokenizer"],
         ["model.tokenizer", "./no/such/tokenizer"]),
    Case("lora-targets-no-layer", ["lora.target_modules=[qkv_proj]"], ["lora.target_modules", "qkv_proj", "q_proj"],
         before_model=False),
    # --- the data
    Case("data-file-missing", ["data.source={tmp}/nope.jsonl"], ["data.source", "nope.jsonl", "does not exist"]),
    Case("data-wrong-columns", ["data.source={tmp}/train.jsonl"], ["'question'", "problem", "data.question_column"],
         files={"train.jsonl": json.dumps({"problem": "1+1?", "solution": "#### 2"}) + "\n"}),
    Case("data-empty-file", ["data.source={tmp}/train.jsonl"], ["train.jsonl", "empty", "data.source"],
         files={"train.jsonl": ""}),
    Case("data-not-json", ["data.source={tmp}/train.jsonl"], ["train.jsonl", "row 1", "fix the file"],
         files={"train.jsonl": json.dumps(GOOD_ROW) + "\n{question: 1+1}\n"}),
    Case("data-column-setting-wrong", ["data.source={tmp}/train.jsonl", "data.question_column=problem"],
         ["'problem'", "['question', 'answer']", "data.question_column"],
         files={"train.jsonl": json.dumps(GOOD_ROW) + "\n"}),
    Case("data-answer-without-marker", ["data.source={tmp}/train.jsonl"],
         ["row 0", "'#### <number>'", "data.answer_column"],
         files={"train.jsonl": json.dumps({"question": "1+1?", "answer": "two"}) + "\n"}),
    Case("data-folder-without-split", ["data.source={tmp}/gsm8k", "data.split=test"], ["'test'", "data.split"],
         files={"gsm8k/train.jsonl": json.dumps(GOOD_ROW) + "\n"}),
    Case("data-limit-zero", ["data.limit=0"], ["'data.limit'", "at least 1"]),
    Case("data-min-ops-above-max", ["data.arithmetic_min_ops=3", "data.arithmetic_max_ops=2"],
         ["'data.arithmetic_min_ops' (3)", "'data.arithmetic_max_ops' (2)"]),
    Case("data-distractors-negative", ["data.arithmetic_distractors=-1"],
         ["'data.arithmetic_distractors'", "0 or more"]),
    Case("data-wording-unknown", ["data.arithmetic_wording=fancy"], ["data.arithmetic_wording", "plain", "varied"]),
    Case("resample-with-batch-scaled-rewards", ["generation.resample_equal_groups=2", "training.scale_rewards=batch"],
         ["generation.resample_equal_groups", "scale_rewards: batch", "resample_equal_groups=0"]),
    Case("resample-rounds-negative", ["generation.resample_equal_groups=-1"],
         ["'generation.resample_equal_groups'", "0 (off) or more"]),
    Case("data-smaller-than-a-round", ["data.limit=1", "training.per_device_train_batch_size=4"],
         ["1 question", "takes 2", "data.limit", "training.per_device_train_batch_size"]),
    # --- the rewards
    Case("reward-builtin-misspelt", ["rewards=[gsm8k_corectness]"],
         ["'gsm8k_corectness'", "did you mean 'gsm8k_correctness'"]),
    Case("reward-module-missing", ["rewards=[nowhere_module:score]"], ["'nowhere_module'"]),
    Case("reward-file-missing", ["rewards=[{tmp}/none.py:score]"], ["none.py", "not found"]),
    Case("reward-function-missing", ["rewards=[{tmp}/my_rewards.py:fin]"], ["'fin'", "did you mean 'fine'"],
         files={"my_rewards.py": MY_REWARDS}),
    Case("reward-file-syntax-error", ["rewards=[{tmp}/broken.py:score]"], ["broken.py", "SyntaxError", "line 2"],
         files={"broken.py": "def score(prompts, completions, **kwargs):\n    return [0.0 for c in completions\n"}),
    Case("reward-needs-a-missing-column", ["rewards=[{tmp}/my_rewards.py:needs_difficulty]"],
         ["needs_difficulty", "'difficulty'"],
         files={"my_rewards.py": MY_REWARDS}),
    # a reward that misbehaves on ordinary completions fails before the run folder (and the model) exists
    Case("reward-raises", ["rewards=[{tmp}/my_rewards.py:raises]"], ["'raises'", "ZeroDivisionError", "my_rewards.py"],
         files={"my_rewards.py": MY_REWARDS}),
    Case("reward-wrong-length", ["rewards=[{tmp}/my_rewards.py:one_short]"],
         ["'one_short'", "2 values for 3 completions"],
         files={"my_rewards.py": MY_REWARDS}),
    Case("reward-nan", ["rewards=[{tmp}/my_rewards.py:nan_reward]"], ["'nan_reward'", "nan", "finite"],
         files={"my_rewards.py": MY_REWARDS}),
    Case("reward-hangs", ["rewards=[graded_format, {name: {tmp}/my_rewards.py:hangs, timeout_s: 1}]"],
         ["reward 'hangs' did not return within 1 s", "the first of its 3 completions", "rewards.1.timeout_s=120",
          "0: no limit"], files={"my_rewards.py": MY_REWARDS}),
    Case("reward-timeout-negative", ["rewards.0.timeout_s=-5"], ["'rewards.0.timeout_s' (graded_format)", ">= 0",
                                                                 "0: no limit"]),
    Case("reward-tags-not-in-system-prompt", ["rewards=[{name: strict_format, kwargs: {tags: {reasoning: think}}}]"],
         ["data.system_prompt asks for", "<think>", "Respond in the following format"]),
    Case("reward-tag-name-with-brackets", ["rewards=[{name: xml_count, kwargs: {tags: {reasoning: <think>}}}]"],
         ["rewards[0] (xml_count)", "'<think>'", "no '<' or '>'"]),
    Case("reward-builtin-unknown-setting", ["rewards=[{name: xml_count, kwargs: {scale: 2}}]"],
         ["'xml_count' is a built-in", "'tags'", "'weight'"]),
    # --- sampling
    Case("temperature-zero", ["generation.temperature=0"], ["'generation.temperature' must be above 0", "0.7"]),
    # --- sizes that do not fit together
    Case("num-generations-not-dividing-batch", ["generation.num_generations=3"],
         ["generation.num_generations (3)", "training.per_device_train_batch_size", "multiple of 3", "one of 2"]),
    Case("num-generations-one", ["generation.num_generations=1"], ["'generation.num_generations'", "at least 2"]),
    # --- where the run goes
    Case("output-dir-inside-a-file", ["run.output_dir={tmp}/notes.txt/run"], ["notes.txt", "a file", "run.output_dir"],
         files={"notes.txt": "a file, not a folder"}),
    # --- engines and backends this machine cannot run
    Case("vllm-not-installed", ["generation.engine=vllm"],
         ["generation.engine=vllm", "pip install", "generation.engine=hf"],
         setup=_without_vllm),
    Case("unsloth-backend-without-gpu", ["model.backend=unsloth"], ["model.backend 'unsloth'", "CUDA GPU"],
         no_gpu=True),
    Case("unsloth-without-gpu", ["model.backend=unsloth", "generation.engine=unsloth"],
         ["model.backend 'unsloth'", "CUDA GPU", "model.backend=transformers"], no_gpu=True),
    Case("unsloth-engine-on-transformers", ["generation.engine=unsloth"],
         ["generation.engine 'unsloth'", "model.backend 'unsloth'"]),
    Case("4bit-without-gpu", ["model.load_in_4bit=true"],
         ["model.load_in_4bit", "CUDA GPU", "model.load_in_4bit=false"], no_gpu=True),
    Case("bfloat16-on-cpu", ["model.dtype=bfloat16"], ["model.dtype", "float32"], no_gpu=True),
]


def _write_files(tmp: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)))


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under `folder` with its bytes, or None when the folder does not exist."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+ \[")  # tqdm's "Loading weights: 100%|####| 272/272 [..."


def message_lines(err: str) -> list[str]:
    """stderr's lines, without the progress bars (tqdm redraws them with carriage returns): what a person reads."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not _PROGRESS_BAR.search(line)]


def assert_refused(code: int, err: str, expect: list[str]) -> str:
    """The checks every case shares; returns the error line."""
    assert code == 2, f"exit status {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = message_lines(err)
    assert len(lines) == 1, f"the error is {len(lines)} lines, not one:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    missing = [text for text in expect if text not in lines[0]]
    assert not missing, f"the error does not name {missing}: {lines[0]}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line(case, tmp_path, monkeypatch, capfd):
    if case.no_gpu:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this refusal is for machines without a CUDA GPU")
    _write_files(tmp_path, case.files)
    if case.setup is not None:
        case.setup(monkeypatch)
    if case.before_model:
        def no_model(*args, **kwargs):
            raise AssertionError(f"a model was loaded for a recipe that should have been refused ({case.id})")

        monkeypatch.setattr("grpo_r1.training.load_model", no_model)
    monkeypatch.chdir(tmp_path)  # a relative path in a case resolves here, and a default runs/ folder would land here
    run_dir = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in [*TINY, *case.args]]
    code = train_module.main([case.recipe.replace("{tmp}", str(tmp_path)), f"run.output_dir={run_dir}", *args])
    _, err = capfd.readouterr()
    assert_refused(code, err, case.expect)
    assert not run_dir.exists(), f"a refused run left {sorted(p.name for p in run_dir.iterdir())}"
    assert not (tmp_path / "runs").exists()


def test_existing_run_folder_is_refused_and_left_unchanged(tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    _write_files(run_dir, {"recipe.yaml": "lora: {r: 4}\n", "metrics.jsonl": '{"step": 1}\n',
                           "adapter/adapter_config.json": "{}"})
    before = _snapshot(run_dir)
    monkeypatch.setattr("grpo_r1.training.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code = train_module.main([str(CPU_RECIPE), f"run.output_dir={run_dir}", *TINY])
    _, err = capfd.readouterr()
    assert_refused(code, err, [str(run_dir), "--overwrite", "run.output_dir"])
    assert _snapshot(run_dir) == before


def test_hub_model_without_network_fails_at_once(tmp_path):
    """A hub id that is not in the local cache, with the hub switched off: no hang, no traceback, and
    the line says how to get the model here."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, f"run.output_dir={run_dir}",
         "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert_refused(proc.returncode, proc.stderr,
                   ["model.name_or_path", "'Qwen/Qwen2.5-0.5B-Instruct'", "hf download", "local Hugging Face folder",
                    "smollm2-135m"])
    assert not run_dir.exists()


def test_hub_dataset_without_network_fails_at_once(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_r1.train", str(CPU_RECIPE), *TINY, f"run.output_dir={run_dir}",
         "data.source=gsm8k"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert_refused(proc.returncode, proc.stderr, ["'openai/gsm8k'", "data.source", "local folder or file"])
    assert not run_dir.exists()


def test_disk_full_before_the_first_step_removes_the_new_folder(tmp_path):
    """RunFolder on its own: a full disk while the run folder is being set up (recipe.yaml, W&B
    files) removes what this run made there and says how to get room."""
    from grpo_r1.errors import StorageError
    from grpo_r1.run.folder import RunFolder

    run_dir = tmp_path / "run"
    folder = RunFolder()
    folder.track(run_dir)
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("lora: {r: 4}\n")
    error = folder.failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "wandb" / "run.wandb")))
    assert isinstance(error, StorageError)
    assert str(run_dir) in str(error) and "free space" in str(error) and "run.output_dir" in str(error)
    assert not run_dir.exists()
    other = ValueError("not about the disk")
    assert RunFolder().failed(other) is other, "other errors pass through unchanged"


def base_model_folder(tmp_path: Path) -> Path:
    """The built-in model as a base model comes: weights, config and tokenizer, but no chat template."""
    from grpo_r1.model.builtin import builtin_model_path

    source, folder = builtin_model_path("smollm2-135m"), tmp_path / "base-model"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (folder / name).symlink_to(source / name)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    assert "chat_template" not in (folder / "tokenizer_config.json").read_text()
    return folder


def test_a_model_without_a_chat_template_is_refused_before_its_weights_load(tmp_path, monkeypatch, capfd):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded for a model that should have been refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    folder = base_model_folder(tmp_path)
    run_dir = tmp_path / "run"
    code = train_module.main([str(CPU_RECIPE), f"run.output_dir={run_dir}", *TINY, f"model.name_or_path={folder}"])
    _, err = capfd.readouterr()
    assert_refused(code, err, [f"the tokenizer of '{folder}' has no chat template", "model.chat_template=plain",
                               ".jinja", "model.tokenizer="])
    assert not run_dir.exists()
    code = train_module.main([str(CPU_RECIPE), f"run.output_dir={run_dir}", *TINY, f"model.name_or_path={folder}",
                              "model.chat_template=./no/such.jinja"])
    _, err = capfd.readouterr()
    assert_refused(code, err, ["model.chat_template './no/such.jinja'", "'plain'", ".jinja"])
