"""Export: a run's LoRA adapter merged into the real built-in SmolLM2 and loaded back with plain
transformers (its logits those of base + adapter), a QLoRA run merged into the 16-bit base, and
the refusals, each one `error:` line with exit status 2."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from grpo_r1 import export
from grpo_r1.recipe import recipe_from_dict
from tests.helpers import chat, lora_model, smollm2_folder

PROMPT = chat("Tom has 3 apples and buys 4 more. How many apples does he have?")
LORA_B_STD = 0.05  # a fresh LoRA has B = 0, which would make base and base + adapter equal


@dataclass
class Run:
    run_dir: Path  # recipe.yaml + adapter/
    qlora_dir: Path  # the same adapter, its recipe with model.load_in_4bit: true
    base_path: Path
    input_ids: torch.Tensor
    ref: torch.Tensor  # float32 logits of base + adapter (unmerged)
    base: torch.Tensor  # float32 logits of the base alone


def write_run(run_dir: Path, adapter_from: Path | None = None, **model: object) -> Path:
    """A run folder: recipe.yaml (every default, model: overridden) and a copy of `adapter_from`."""
    run_dir.mkdir(parents=True)
    recipe = recipe_from_dict({"model": dict(model)} if model else {}).to_dict()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    if adapter_from is not None:
        shutil.copytree(adapter_from, run_dir / "adapter")
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    from transformers import AutoTokenizer

    path = smollm2_folder()
    model = lora_model(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_STD)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        ref = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    root = tmp_path_factory.mktemp("export")
    run_dir = write_run(root / "smollm2-run")
    model.save_pretrained(run_dir / "adapter")
    qlora_dir = write_run(root / "qlora-run", run_dir / "adapter", load_in_4bit=True)
    return Run(run_dir, qlora_dir, path, ids, ref, base)


def logits_of(folder: Path, input_ids: torch.Tensor) -> tuple[torch.Tensor, object]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers: no PEFT, no adapter
    model.eval()
    with torch.no_grad():
        return model(input_ids).logits.float(), model


def tensor_names(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_float32_export_is_base_plus_adapter(run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an earlier export, replaced with --overwrite
    (out / "stale.bin").write_text("old")
    assert export.main([str(run.run_dir), "--merged", str(out), "--dtype", "float32", "--overwrite"]) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == str(out)
    assert "AutoModelForCausalLM.from_pretrained" in stdout[1] and "convert_hf_to_gguf.py" in stdout[1]

    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= names
    assert "stale.bin" not in names and "adapter_config.json" not in names
    assert not list(tmp_path.glob(".merged-*"))  # no staging folder left behind

    logits, model = logits_of(out, run.input_ids)
    assert model.dtype == torch.float32
    assert tensor_names(out) == tensor_names(run.base_path)  # the base's own weights, no LoRA ones
    assert (run.ref - run.base).abs().max() > 1.0  # the adapter changes the logits: the check below can fail
    # Merged and unmerged add the same numbers in another order: float32 rounding only (logits reach ~40).
    torch.testing.assert_close(logits, run.ref, atol=1e-4, rtol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    rendered = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"]
    assert torch.equal(rendered, run.input_ids)

    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "smollm2-135m" in card
    assert run.run_dir.name in card and "None" not in card


def test_qlora_run_merges_into_16_bit_base_and_a_failed_push_keeps_the_folder(run, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "merged"
    code = export.main([str(run.qlora_dir), "--merged", str(out), "--push", "someone/smollm2-r1"])  # bfloat16
    captured = capsys.readouterr()
    assert code == 2
    [error] = error_lines(captured.err)
    assert error.startswith("error: could not reach the Hugging Face hub")
    assert f"the merged folder is at {str(out)!r}" in error and f"hf upload someone/smollm2-r1 {out}" in error
    assert "16-bit copy of the base" in captured.err  # the QLoRA note
    assert captured.out.splitlines()[0] == str(out)  # written before the push

    logits, model = logits_of(out, run.input_ids)
    assert model.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text()).get("quantization_config") is None
    effect = (run.ref - run.base).abs().mean()
    error_16 = (logits - run.ref).abs().mean()
    assert error_16 < 0.3 * effect  # bfloat16 rounding, well below what the adapter changes
    assert (logits - run.ref).abs().max() < 3.0  # logits of magnitude ~40: a few bf16 steps
    assert "QLoRA" in (out / "README.md").read_text()


def _prequantized_base(tmp_path: Path, run: Run) -> list[str]:
    base = tmp_path / "base-bnb-4bit"
    base.mkdir()
    config = json.loads((run.base_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    run_dir = write_run(tmp_path / "run", run.run_dir / "adapter", name_or_path=str(base))
    return [str(run_dir), "--merged", str(tmp_path / "out")]


def _non_empty_out(tmp_path: Path, run: Run, overwrite: bool) -> list[str]:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    return [str(run.run_dir), "--merged", str(tmp_path / "out")] + (["--overwrite"] if overwrite else [])


REFUSALS = {
    "no run folder": (lambda tmp, run: [str(tmp / "missing"), "--merged", str(tmp / "out")], "does not exist"),
    "no recipe.yaml": (lambda tmp, run: [str(tmp), "--merged", str(tmp / "out")], "has no recipe.yaml"),
    "no adapter": (lambda tmp, run: [str(write_run(tmp / "run")), "--merged", str(tmp / "out")],
                   "holds no adapter"),
    "output not empty": (lambda tmp, run: _non_empty_out(tmp, run, overwrite=False),
                         "exists and is not empty; pass a new folder, or --overwrite"),
    "overwrite a non-export": (lambda tmp, run: _non_empty_out(tmp, run, overwrite=True),
                               "--overwrite replaces only an earlier export"),
    "bad repo id": (lambda tmp, run: [str(run.run_dir), "--merged", str(tmp / "out"), "--push", "a b/c"],
                    "is not a Hugging Face repo id"),
    "4-bit base on disk": (_prequantized_base, "needs a CUDA GPU with bitsandbytes"),
}


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.skipif(case == "4-bit base on disk" and torch.cuda.is_available(),
                                                 reason="with a CUDA GPU the 4-bit base is dequantized, not refused"))
    for case in REFUSALS
])
def test_bad_input_is_one_error_line(run, tmp_path, capsys, case):
    make_args, expected = REFUSALS[case]
    args = make_args(tmp_path, run)
    assert export.main(args) == 2
    err = capsys.readouterr().err
    [error] = error_lines(err)
    assert expected in error, error
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or (tmp_path / "out" / "notes.txt").read_text() == "mine"
