"""Merge a run's LoRA adapter into its base model and save a plain Hugging Face model folder
(the library behind `python -m grpo_r1.export`).

    out = export_merged("runs/smollm2_gsm8k_cpu-20261101-120000", "merged", dtype="bfloat16")
    url = push_folder(out, "you/smollm2-r1")          # optional: upload the folder to the Hugging Face hub

The run folder's recipe.yaml names the base model, its adapter/ holds the LoRA weights (a
checkpoint folder, `<run>/checkpoints/checkpoint-N`, holds both too). The base is loaded through
transformers on the CPU in the export dtype, the adapter applied (PEFT), merged into the weights
(`merge_and_unload`) and the result saved with `save_pretrained` (safetensors), beside the
tokenizer with its chat template and a README.md model card naming the base and the run.
`AutoModelForCausalLM.from_pretrained(out)` loads it; PEFT is not needed to use it.

4-bit (QLoRA) runs, `model.load_in_4bit: true`: the adapter was trained on a 4-bit copy of the
base, but merging into 4-bit weights would round most of the LoRA update away. The export
therefore reloads the base unquantized, in the export dtype, and merges there; it needs neither
a GPU nor bitsandbytes. The merged model is the 16-bit base plus the update (not the 4-bit base
the adapter was trained against, which differs from it by the quantization error). A base that
is stored quantized (its config.json has a bitsandbytes `quantization_config`, as `*-bnb-4bit`
checkpoints do) has no 16-bit weights to reload: it is dequantized on a CUDA GPU with bitsandbytes,
or, without them, the export stops and asks for the 16-bit original (`base=`, `--base`).

The folder is written to a hidden temporary sibling and renamed into place at the end, so a
failed export leaves no half-written folder behind.

GGUF (llama.cpp, Ollama): the `gguf` package on PyPI is the file library only; llama.cpp's
converter is not in it, and no maintained one is installable with pip. Convert the exported
folder from a llama.cpp checkout: `python convert_hf_to_gguf.py OUT_DIR --outfile model-f16.gguf --outtype f16`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from grpo_r1.errors import ExportError, ModelError, StorageError
from grpo_r1.model import check_model_can_load, load_base_model, model_path
from grpo_r1.recipe import Recipe, load_recipe
from grpo_r1.run.folder import RECIPE_FILE, is_disk_full
from grpo_r1.run.model_card import MODEL_CARD, describe_base, eval_lines, rewards_text, training_text
from grpo_r1.sampling import ADAPTER_CONFIG, adapter_base_model

logger = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
GGUF_COMMAND = "python convert_hf_to_gguf.py {out} --outfile model-f16.gguf --outtype f16"


@dataclasses.dataclass(frozen=True)
class RunSource:
    """Where an export reads from: the run (or checkpoint) folder, its recipe and its adapter folder."""

    run_dir: Path
    recipe: Recipe
    adapter_dir: Path


def export_merged(run_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16", *,
                  base: str | None = None, overwrite: bool = False) -> Path:
    """Merge the LoRA adapter of the run at `run_dir` into its base model and save it at `out_dir`.

    Args:
        run_dir: a run folder (recipe.yaml + adapter/), its adapter/ folder, or one of its
            checkpoints (checkpoints/checkpoint-N, which holds a recipe.yaml and an adapter too).
        out_dir: the folder to write: it must not exist or be empty, unless `overwrite` (which
            replaces only an earlier export, a folder with a config.json).
        dtype: "bfloat16" (default), "float16" or "float32": the dtype the base is loaded, merged
            and saved in.
        base: the base model to merge into instead of the recipe's `model.name_or_path` (a folder,
            hub id or built-in name); for a run whose base is stored quantized, its 16-bit original.
        overwrite: replace an earlier export at `out_dir`.

    Returns the output folder. Raises ExportError (bad run or output folder) or ModelError (the
    base or adapter cannot be loaded) with the fix in the message.
    """
    import torch

    if dtype not in DTYPES:
        raise ExportError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = read_run(run_dir)
    out = check_out_dir(out_dir, overwrite=overwrite)
    recipe = source.recipe
    if base is not None:
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name_or_path=base))
    torch_dtype = getattr(torch, dtype)

    model, tokenizer, base_path = _load_base_unquantized(recipe, dtype)
    trained_on = adapter_base_model(source.adapter_dir)
    if trained_on and Path(trained_on).name != Path(base_path).name:
        logger.info("note: the adapter was trained on %r; merging it into %r", trained_on, base_path)
    model = _apply_adapter(model, source.adapter_dir, base_path)
    logger.info("merging the LoRA adapter into the %s weights", dtype)
    merged = model.merge_and_unload()
    merged = merged.to(torch_dtype)
    merged.eval()
    _check_plain(merged)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        merged.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        if getattr(tokenizer, "chat_template", None) is None:
            logger.warning("warning: the tokenizer has no chat template; the exported model cannot render chats "
                           "the way it was trained")
        (staging / MODEL_CARD).write_text(model_card(source, recipe, dtype), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    except Exception as e:  # safetensors reports a full disk as its own error, not OSError
        if is_disk_full(e):
            raise StorageError(f"the disk is full: the merged model (about {_size_gb(merged):.1f} GB) does not fit "
                               f"in {str(out.parent)!r}; free space there or export to another disk") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("merged model written to %s", out)
    return out


def read_run(run_dir: str | Path) -> RunSource:
    """The recipe and adapter folder of a run folder (or its adapter/ folder, or a checkpoint folder).

    Raises ExportError naming what is missing and what to pass instead.
    """
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ExportError(f"run folder {str(path)!r} does not exist; pass the folder python -m grpo_r1.train "
                          f"made (runs/<name>)")
    if not (path / RECIPE_FILE).is_file() and (path / ADAPTER_CONFIG).is_file() \
            and (path.parent / RECIPE_FILE).is_file():
        path = path.parent  # the run's adapter/ folder was passed
    if not (path / RECIPE_FILE).is_file():
        raise ExportError(f"{str(path)!r} has no {RECIPE_FILE}, so it is not a grpo_r1 run folder; pass the folder "
                          f"python -m grpo_r1.train made (runs/<name>), or one of its checkpoints/checkpoint-N")
    for candidate in (path / "adapter", path):
        if (candidate / ADAPTER_CONFIG).is_file():
            adapter_dir = candidate
            break
    else:
        checkpoints = sorted((path / "checkpoints").glob("checkpoint-*"),
                             key=lambda p: int(p.name.rpartition("-")[2]) if p.name.rpartition("-")[2].isdigit()
                             else -1)
        hint = (f"; the run has no final adapter yet: pass its latest checkpoint {str(checkpoints[-1])!r}"
                if checkpoints else "; a run writes adapter/ when training ends")
        raise ExportError(f"run folder {str(path)!r} holds no adapter ({ADAPTER_CONFIG} in adapter/ or in the "
                          f"folder itself){hint}")
    return RunSource(run_dir=path, recipe=load_recipe(path / RECIPE_FILE), adapter_dir=adapter_dir)


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """`out_dir` as a path that can be written: new, empty, or (with `overwrite`) an earlier export."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"output folder {str(out)!r} is a file; pass a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"output folder {str(out)!r} exists and is not empty; pass a new folder, "
                              f"or --overwrite to replace an earlier export there")
        if not (out / "config.json").is_file():
            raise ExportError(f"--overwrite replaces only an earlier export (a folder with config.json), and "
                              f"{str(out)!r} is none; pass a new or empty folder")
    return out


def push_folder(out_dir: str | Path, repo: str) -> str:
    """Upload the exported folder to the Hugging Face hub model repo `repo` (created when missing); its URL.

    Raises ExportError, naming the folder and the command to push it later, when the hub cannot
    be reached or refuses (not logged in, no write access).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    out = Path(out_dir)
    later = f"the merged folder is at {str(out)!r}, push it later with `hf upload {repo} {shlex.quote(str(out))}`"
    check_repo_id(repo)
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="model",
                                   commit_message="Upload a merged grpo_r1 model")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise ExportError(f"the Hugging Face hub refused the push to {repo!r} (HTTP {status}): log in with "
                              f"`hf auth login` or set HF_TOKEN to a token that can write there; {later}") from None
        raise ExportError(f"the push to {repo!r} failed ({_first_line(e)}); {later}") from None
    except (OfflineModeIsEnabled, OSError) as e:
        raise ExportError(f"could not reach the Hugging Face hub ({_first_line(e)}); {later}") from None
    except Exception as e:  # httpx and requests transport errors: no connection, DNS, timeout
        if not _is_connection_error(e):
            raise
        raise ExportError(f"could not reach the Hugging Face hub ({_first_line(e)}); {later}") from None
    url = getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo}"
    logger.info("pushed %s to %s", out, url)
    return str(url)


def check_repo_id(repo: str) -> None:
    """Raise ExportError when `repo` is not a hub repo id (`user/name`), before any model loads."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ExportError(f"--push {repo!r} is not a Hugging Face repo id ({_first_line(e)}); "
                          f"give one like your-name/model-name") from None
    if "/" not in repo:
        raise ExportError(f"--push {repo!r} names no owner; give your-name/{repo} (or an organization's name)")


def model_card(source: RunSource, recipe: Recipe, dtype: str) -> str:
    """The README.md of an exported folder: front matter for the hub, the base, the run, how to use it."""
    cfg, lora = recipe.model, recipe.lora
    base = describe_base(cfg)
    front = {"library_name": "transformers", "tags": ["grpo", "grpo_r1", "lora-merged", "reasoning"]}
    if base.hub_id:
        front = {"base_model": base.hub_id, "base_model_relation": "finetune", **front}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {source.run_dir.name} (merged)", "",
        f"A model trained with GRPO by grpo_r1, from the run folder `{source.run_dir.name}`: "
        f"its LoRA adapter merged into the base model's weights and saved in {dtype}. It loads with plain "
        f"transformers; PEFT is not needed.", "",
        f"- **Base model:** {base.text}",
        f"- **Run:** `{source.run_dir.name}` (adapter `{source.adapter_dir.relative_to(source.run_dir.parent)}`)",
        f"- **Data:** `{recipe.data.source}`; **rewards:** {rewards_text(recipe)}",
        f"- **Training:** {training_text(recipe)}",
        f"- **LoRA:** r {lora.r}, alpha {lora.alpha}, on {', '.join(lora.target_modules)}"
        + (" (trained on the 4-bit base, QLoRA; merged into its 16-bit weights)" if cfg.load_in_4bit else ""),
    ]
    lines += eval_lines(source.run_dir)
    system = recipe.data.system_prompt
    lines += [
        "", "## Use", "",
        "The model was trained on chat prompts" + (" with this system prompt; give it the same one:" if system
                                                   else " without a system prompt."),
    ]
    if system:
        lines += ["", "```text", system, "```"]
    lines += [
        "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "path = \"path/to/this/folder\"  # or its hub repo id",
        "merged = AutoModelForCausalLM.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
    ]
    if system:
        lines.append(f"system_prompt = {json.dumps(system)}")
    lines += [
        "messages = [" + ("{\"role\": \"system\", \"content\": system_prompt}, " if system else "")
        + "{\"role\": \"user\", \"content\": \"What is 7 plus 5?\"}]",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
        "return_dict=True)",
        f"out = merged.generate(**inputs, max_new_tokens={recipe.generation.max_completion_length})",
        "print(tokenizer.decode(out[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```", "",
        "For llama.cpp or Ollama, convert the folder to GGUF from a llama.cpp checkout:", "",
        "```sh", GGUF_COMMAND.format(out="path/to/this/folder"), "```", "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading


def _load_base_unquantized(recipe: Recipe, dtype: str) -> tuple[Any, Any, str]:
    """The recipe's base model unquantized in `dtype` on the CPU, its tokenizer and its path."""
    cfg = recipe.model
    plain_cfg = dataclasses.replace(cfg, backend="transformers", load_in_4bit=False, gradient_checkpointing=False,
                                    dtype=dtype)
    # The path checks only: "auto" passes the dtype check, which is about training on a CPU.
    check_model_can_load(dataclasses.replace(recipe, model=dataclasses.replace(plain_cfg, dtype="auto")))
    path = model_path(plain_cfg)
    if cfg.load_in_4bit:
        logger.info("the run trained a QLoRA adapter on the 4-bit base: merging it into a 16-bit copy of the base "
                    "(%s, loaded unquantized); merging into 4-bit weights would round the update away", dtype)
    stored = _stored_quantization(path, cfg.trust_remote_code)
    if stored is not None:
        return _load_dequantized(plain_cfg, path, stored, dtype)
    logger.info("loading the base model %s in %s on the CPU", path, dtype)
    model, tokenizer, path = load_base_model(dataclasses.replace(recipe, model=plain_cfg))
    return model, tokenizer, path


def _stored_quantization(path: str, trust_remote_code: bool) -> str | None:
    """The quantization method a checkpoint is stored in (its config.json's quantization_config), else None."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # loading the model reports it, with the fix
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(
        quantization, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def _load_dequantized(plain_cfg: Any, path: str, method: str, dtype: str) -> tuple[Any, Any, str]:
    """A base stored quantized, dequantized into `dtype` on the CPU: bitsandbytes only, on a CUDA GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fix = ("pass its 16-bit original with --base (the unquantized model it was made from, e.g. without the "
           "'-bnb-4bit' in its name)")
    if method != "bitsandbytes":
        raise ModelError(f"base model {path!r} is stored quantized ({method}), which grpo_r1 cannot dequantize for "
                         f"a merge; {fix}")
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"base model {path!r} is stored in bitsandbytes 4/8-bit: dequantizing it for the merge "
                         f"needs a CUDA GPU with bitsandbytes, and this machine has "
                         f"{'no CUDA GPU' if not torch.cuda.is_available() else 'no bitsandbytes'}; run the export "
                         f"on such a machine, or {fix}")
    logger.warning("warning: base model %s is stored in bitsandbytes' quantized form: dequantizing it to %s on the "
                   "GPU; the merged weights carry its quantization error (to avoid it, %s)", path, dtype, fix)
    torch_dtype = getattr(torch, dtype)
    try:
        remote = plain_cfg.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(plain_cfg.tokenizer or path, trust_remote_code=remote)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map={"": 0},
                                                     trust_remote_code=remote)
    except (OSError, ValueError) as e:
        raise ModelError(f"base model {path!r} could not be loaded ({_first_line(e)}); {fix}") from None
    model = model.dequantize(dtype=torch_dtype).to("cpu")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path


def _apply_adapter(model: Any, adapter_dir: Path, base_path: str) -> Any:
    from peft import PeftModel

    logger.info("applying the LoRA adapter %s", adapter_dir)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = _first_line(e)[:200]
        raise ModelError(f"adapter {str(adapter_dir)!r} does not fit base model {base_path!r} ({first}); "
                         f"export the run folder whose recipe.yaml it was trained with, or name its base with "
                         f"--base") from None


def _check_plain(model: Any) -> None:
    """The merged model must hold no LoRA weights (else from_pretrained would need PEFT)."""
    leftover = [name for name, _ in model.named_parameters() if "lora_" in name]
    if leftover:
        raise ModelError(f"the merge left LoRA weights in the model ({leftover[0]}, ...); this is a bug, please report "
                         f"it with the run's recipe.yaml")


# ----------------------------------------------------------------------------- small helpers


def _size_gb(model: Any) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9


def _is_connection_error(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
