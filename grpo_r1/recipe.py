"""The recipe: one YAML file that describes a run, validated once into typed objects.

A recipe has these sections, each a dataclass below:

    model       which model to load and how (backend, dtype, quantisation)
    lora        the LoRA adapter that is trained
    data        where the questions come from and how prompts are built
    rewards     the reward functions, each with a weight
    cold_start  optional supervised steps on formatted reference solutions before GRPO
    generation  the engine that samples completions and its sampling settings
    training    any field of TRL's GRPOConfig (checked against the real dataclass)
    logging     W&B project, run name, tags
    guards      learning-signal checks that warn, or stop the run, when GRPO cannot learn
    run         run folder, seed and the worst-case preflight step

`load_recipe(path, overrides)` reads the YAML, applies `a.b=value` overrides, and checks every
key and type. Unknown keys are errors that name the closest valid key; wrong types name the
key and what was expected. Nothing else in grpo_r1 reads YAML or environment-style settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from grpo_r1.errors import RecipeError

R1_SYSTEM_PROMPT = (
    "Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n"
    "<answer>\n...\n</answer>"
)

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """The base model. `name_or_path` is a built-in name (see `grpo_r1.builtin_models`),
    a local Hugging Face folder, or a hub id."""

    name_or_path: str = "smollm2-135m"
    backend: Literal["transformers", "unsloth"] = "transformers"
    # "auto": bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # 4-bit QLoRA through bitsandbytes (needs a CUDA GPU).
    load_in_4bit: bool = False
    # Longest prompt + completion the model is prepared for (Unsloth and vLLM size their buffers by it).
    max_seq_length: int = 1024
    # True: recompute activations in the backward pass; "unsloth": Unsloth's offloaded variant.
    gradient_checkpointing: bool | Literal["unsloth"] = True
    # Tokenizer folder or hub id when it differs from the model's.
    tokenizer: str | None = None
    trust_remote_code: bool = False
    # "random": no weights are read; `architecture` (see grpo_r1.architectures) is built at random
    # init with `tokenizer`, for measuring speed and memory (python -m grpo_r1.bench).
    init: Literal["pretrained", "random"] = "pretrained"
    architecture: str | None = None
    # python -m grpo_r1.train refuses a random-init model unless this is true.
    train_random_init: bool = False


@dataclass
class LoraConfig:
    """The LoRA adapter trained on top of the frozen base model."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))


@dataclass
class DataConfig:
    """Where questions come from.

    `source` is "gsm8k" (the hub's openai/gsm8k), "arithmetic" (grade-school word problems
    generated from `seed`, no files needed), a local .jsonl/.parquet file or a folder of them,
    or another hub dataset id. Rows must hold a question and a GSM8K-style answer ending in
    `#### N`.
    """

    source: str = "arithmetic"
    split: str = "train"
    hub_config: str = "main"
    question_column: str = "question"
    answer_column: str = "answer"
    system_prompt: str = R1_SYSTEM_PROMPT
    # Keep at most this many rows (after shuffling with the run's seed).
    limit: int | None = None
    # The arithmetic generator: how many problems, and the most operations in one problem.
    arithmetic_examples: int = 2000
    arithmetic_max_ops: int = 2


@dataclass
class RewardSpec:
    """One reward function. `name` is a built-in name, "package.module:function" or
    "path/to/file.py:function". With `kwargs`, the named object is a factory called with them."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


def _seed_rewards() -> list[RewardSpec]:
    from rewards import SEED_REWARDS

    return [RewardSpec(name) for name in SEED_REWARDS]


@dataclass
class GenerationConfig:
    """How completions are sampled. `engine`: "hf" (TRL's built-in generate), "hf-compiled" (the
    trainer's model through a static KV cache and torch.compile with CUDA graphs, all of a round's
    prompts in one batch: the fast path without vLLM), "vllm" (an
    in-process vLLM engine fed the adapter each step), "unsloth" (Unsloth's fast_inference,
    needs `model.backend: unsloth` and a GPU)."""

    engine: Literal["hf", "hf-compiled", "vllm", "unsloth"] = "hf"
    num_generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    # Fraction of GPU memory the vLLM engine may hold (vllm and unsloth engines).
    gpu_memory_utilization: float = 0.5
    # hf-compiled only: sample from a merged copy of the linear weights (base + LoRA, q/k/v and
    # gate/up fused), refreshed every round: decoding about twice as fast at small batches, for
    # one more copy of the linear weights in GPU memory (5.5 GB for Qwen2.5-3B in bf16).
    merged_weights: bool = False
    # TRL's importance-sampling correction for the gap between the engine's and the trainer's
    # log-probabilities (and the sampling/sampling_logp_difference metrics): one more forward
    # pass of the batch per round. TRL turns it on for vLLM; its own generate runs without it.
    importance_sampling: bool = True


@dataclass
class ColdStartConfig:
    """A short supervised warm-up of the adapter before GRPO, as DeepSeek-R1 did: the model is
    taught the answer layout on the dataset's reference solutions written in R1 format
    (`<reasoning>` the solution's steps `</reasoning><answer>` the gold `</answer>`).
    A weak model that never writes the tags gives GRPO all-equal rewards and nothing to learn;
    a few dozen steps here fix that. `steps: 0` (the default) skips it."""

    steps: int = 0
    batch_size: int = 8
    learning_rate: float = 1.0e-4
    # How many of the dataset's rows it cycles through; None: steps x batch_size (each row once).
    examples: int | None = None


@dataclass
class LoggingConfig:
    """Where metrics go. metrics.jsonl in the run folder is always written."""

    report_to: Literal["wandb", "none"] = "wandb"
    project: str = "grpo_r1"
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: WANDB_MODE from the environment if set, else "online" when W&B has an API key,
    # else "offline" (files in the run folder, sync later with `wandb sync`).
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    logging_steps: int = 1
    # Every this many steps, a group of completions with their rewards goes to completions.jsonl
    # in the run folder and to W&B's table "completions/history"; 0: never.
    completions_every: int = 0


@dataclass
class RunConfig:
    """The run folder and seed. `output_dir` defaults to runs/<run name>."""

    output_dir: str | None = None
    seed: int = 42
    # One training step at the largest shape the recipe allows, before the run folder is made, so
    # an out-of-memory shows at once (see grpo_r1/preflight.py). "auto": on when a CUDA GPU is used.
    preflight: bool | Literal["auto"] = "auto"


# False too: YAML 1.1 reads a bare `off` as false.
GuardAction = Literal["warn", "stop", "off", False]


@dataclass
class GuardsConfig:
    """Checks on the metrics TRL logs each step (see grpo_r1/guards.py). Each guard warns (a
    line on the console and in guards.jsonl), stops the run (the adapter so far is saved, the
    command exits non-zero) or is off. A guard fires when its condition held for `patience`
    steps in a row; a NaN/inf loss or gradient fires at once (and that update is skipped)."""

    patience: int = 5
    # Most of the groups' completions all scored the same: their advantages are zero.
    equal_rewards: GuardAction = "warn"
    equal_rewards_fraction: float = 0.95
    # Most completions hit generation.max_completion_length before ending.
    truncation: GuardAction = "warn"
    truncation_fraction: float = 0.9
    # A reward function paid every completion of the step the same value.
    constant_reward: GuardAction = "warn"
    # The loss or the gradient norm is NaN or infinite.
    nonfinite: GuardAction = "stop"
    # The mean |engine - trainer| logprob per token (vllm and unsloth engines) is above the bound.
    logprob_gap: GuardAction = "warn"
    logprob_gap_max: float = 0.1


GUARD_NAMES = ("equal_rewards", "truncation", "constant_reward", "nonfinite", "logprob_gap")


# GRPOConfig fields that other sections own, with where to set them instead.
_OWNED_ELSEWHERE = {
    "output_dir": "run.output_dir",
    "seed": "run.seed",
    "num_generations": "generation.num_generations",
    "max_completion_length": "generation.max_completion_length",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "use_vllm": "generation.engine",
    "vllm_mode": "generation.engine",
    "vllm_gpu_memory_utilization": "generation.gpu_memory_utilization",
    "reward_weights": "rewards[].weight",
    "report_to": "logging.report_to",
    "run_name": "logging.run_name",
    "logging_steps": "logging.logging_steps",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
}

# GRPOConfig fields that hold a secret, with the environment variable that carries it instead:
# a recipe is saved into the run folder and W&B's config, so it never holds one.
_SECRETS_FROM_ENV = {"hub_token": "HF_TOKEN"}

# Defaults grpo_r1 gives GRPOConfig fields where TRL's own default suits a LoRA run badly.
TRAINING_DEFAULTS: dict[str, Any] = {
    "beta": 0.04,  # a KL penalty against the base model (the adapter disabled)
    "learning_rate": 5e-6,
    "per_device_train_batch_size": 8,
    "max_steps": 100,
    "save_steps": 50,  # a checkpoint (adapter, optimizer, RNG, data position) every 50 steps
    "save_total_limit": 2,  # keep the newest two complete checkpoints (grpo_r1/checkpoint.py)
}


@dataclass
class Recipe:
    """A validated run description. Build it with `load_recipe` or `recipe_from_dict`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardSpec] = field(default_factory=_seed_rewards)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    training: dict[str, Any] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The recipe file's folder: relative reward file paths are looked up there first.
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, every default filled in (what `recipe.yaml` in a run folder holds)."""
        out = dataclasses.asdict(self)
        out.pop("base_dir")
        out["training"] = {**TRAINING_DEFAULTS, **self.training}
        return out


# ----------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, num_processes: int = 1) -> Recipe:
    """Read a recipe YAML file, apply `dotted.key=value` overrides, and validate it.

    `num_processes`: the training processes it runs on (accelerate launch's), for the batch checks.
    Raises RecipeError naming the file, the key and the fix for any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist; pass the path of a YAML recipe, e.g. recipes/smollm2_gsm8k_cpu.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                          f"save the recipe as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        opened = getattr(e, "context_mark", None)
        if opened is not None and getattr(e, "context", None) and (mark is None or opened.line != mark.line):
            problem += f" ({e.context} that starts at line {opened.line + 1}, column {opened.column + 1})"
        if "'\\t'" in problem:
            problem += "; indent with spaces, YAML does not allow tabs"
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (model:, data:, ...), got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    recipe = recipe_from_dict(data, source=str(path), num_processes=num_processes)
    recipe.base_dir = path.resolve().parent
    return recipe


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one command-line override `a.b.c=value` to raw recipe data, in place.

    The value is parsed as YAML (`5` is an int, `[a, b]` a list, `null` None). A number in
    the path indexes a list: `rewards.0.weight=2`.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {item!r} is not of the form section.key=value (e.g. training.max_steps=5)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, here, item)]
            continue
        if node.get(part) is None:
            if parts[depth + 1].isdigit():
                raise RecipeError(f"override {item!r}: the recipe has no {here!r} list to index; write the list in the recipe file")
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {item!r}: {here!r} is a single value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, item)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, here: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {item!r}: {here!r} indexes a list of {len(node)} items; use an index from 0 to {len(node) - 1}")
    return int(part)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe", *, num_processes: int = 1) -> Recipe:
    """Validate raw recipe data (as read from YAML) into a Recipe (to run on `num_processes` processes)."""
    recipe = _build_dataclass(Recipe, data, prefix="", source=source, skip={"base_dir"})
    recipe.training = _check_training(recipe.training, source)
    _check_consistency(recipe, source, num_processes)
    return recipe


def _build_dataclass(cls: type, data: Any, prefix: str, source: str, skip: set[str] = frozenset()) -> Any:
    where = prefix.rstrip(".") or "the recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {where!r} must be a mapping of keys, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    for key in data:
        if key not in names:
            raise RecipeError(f"{source}: unknown key {prefix + str(key)!r}{_did_you_mean(str(key), names, prefix)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names and f.name not in data
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{source}: {where!r} needs the key {prefix + missing[0]!r}")
    values = {key: _coerce(hints[key], value, prefix + key, source) for key, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check `value` against the type `hint`; return it (built into a dataclass where the hint is one)."""
    if dataclasses.is_dataclass(hint):
        if hint is RewardSpec and isinstance(value, str):
            value = {"name": value}
        return _build_dataclass(hint, value, key + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {_describe(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise RecipeError(f"{source}: {key!r} must be one of {', '.join(repr(a) for a in args)}, got {_describe(value)}"
                          f"{_did_you_mean(str(value), [str(a) for a in args], '')}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {key!r} must be a mapping, got {_describe(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-3 (no dot) as a string
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        # Enums and other types of GRPOConfig fields: TRL converts strings itself.
        return value
    raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {_describe(value)}")


def _check_training(training: dict[str, Any], source: str) -> dict[str, Any]:
    """Check `training:` keys and types against TRL's GRPOConfig dataclass."""
    from trl import GRPOConfig  # imported here: TRL takes seconds to import

    fields = {f.name: f for f in dataclasses.fields(GRPOConfig) if f.init}
    hints = typing.get_type_hints(GRPOConfig)
    checked = {}
    for key, value in training.items():
        if key in _OWNED_ELSEWHERE:
            raise RecipeError(f"{source}: 'training.{key}' is set by {_OWNED_ELSEWHERE[key]!r} in grpo_r1 recipes; set it there")
        if key in _SECRETS_FROM_ENV:
            raise RecipeError(f"{source}: 'training.{key}' is a secret and a recipe is saved with the run (recipe.yaml, W&B); "
                              f"remove it and set the {_SECRETS_FROM_ENV[key]} environment variable instead")
        if key not in fields:
            raise RecipeError(f"{source}: unknown key 'training.{key}' (not a field of TRL's GRPOConfig)"
                              f"{_did_you_mean(key, list(fields), 'training.')}")
        checked[key] = _coerce(hints[key], value, f"training.{key}", source)
    return checked


def _check_consistency(recipe: Recipe, source: str, num_processes: int = 1) -> None:
    """Checks that span sections; each names the keys to change."""
    gen, model = recipe.generation, recipe.model
    if gen.engine == "unsloth" and model.backend != "unsloth":
        raise RecipeError(f"{source}: generation.engine 'unsloth' needs model.backend 'unsloth' (Unsloth's fast_inference shares the model's weights)")
    if model.gradient_checkpointing == "unsloth" and model.backend != "unsloth":
        raise RecipeError(f"{source}: model.gradient_checkpointing 'unsloth' needs model.backend 'unsloth'; use true for the transformers backend")
    positive = {
        "generation.num_generations": gen.num_generations,
        "generation.max_completion_length": gen.max_completion_length,
        "model.max_seq_length": model.max_seq_length,
        "lora.r": recipe.lora.r,
        "data.arithmetic_examples": recipe.data.arithmetic_examples,
        "data.arithmetic_max_ops": recipe.data.arithmetic_max_ops,
        "logging.logging_steps": recipe.logging.logging_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise RecipeError(f"{source}: {key!r} must be at least 1, got {value}")
    if gen.num_generations < 2:
        raise RecipeError(f"{source}: 'generation.num_generations' must be at least 2: GRPO compares completions within a group")
    if not 0.0 < gen.gpu_memory_utilization <= 1.0:
        raise RecipeError(f"{source}: 'generation.gpu_memory_utilization' is a fraction in (0, 1], got {gen.gpu_memory_utilization}")
    if gen.merged_weights and gen.engine != "hf-compiled":
        raise RecipeError(f"{source}: 'generation.merged_weights' applies to generation.engine 'hf-compiled' only "
                          f"(the engine is {gen.engine!r}); remove it or switch the engine")
    if not 0.0 <= recipe.lora.dropout < 1.0:
        raise RecipeError(f"{source}: 'lora.dropout' is a probability in [0, 1), got {recipe.lora.dropout}")
    if recipe.logging.completions_every < 0:
        raise RecipeError(f"{source}: 'logging.completions_every' must be 0 (off) or a number of steps, got {recipe.logging.completions_every}")
    guards = recipe.guards
    for key in GUARD_NAMES:
        if getattr(guards, key) is False:
            setattr(guards, key, "off")
    if guards.patience < 1:
        raise RecipeError(f"{source}: 'guards.patience' is a number of steps, at least 1, got {guards.patience}")
    for key in ("equal_rewards_fraction", "truncation_fraction"):
        if not 0.0 < getattr(guards, key) <= 1.0:
            raise RecipeError(f"{source}: 'guards.{key}' is a fraction in (0, 1], got {getattr(guards, key)}")
    if not guards.logprob_gap_max > 0:
        raise RecipeError(f"{source}: 'guards.logprob_gap_max' is a logprob difference per token, above 0, got {guards.logprob_gap_max}")
    if model.init == "random":
        if not model.architecture or not model.tokenizer:
            raise RecipeError(f"{source}: model.init 'random' needs model.architecture (e.g. qwen2.5-3b) and "
                              f"model.tokenizer (a tokenizer folder of that model family)")
    elif model.architecture:
        raise RecipeError(f"{source}: model.architecture is only read with model.init: random; remove it or set model.init=random")
    cold = recipe.cold_start
    if cold.steps < 0 or cold.batch_size < 1 or cold.learning_rate <= 0 or (cold.examples is not None and cold.examples < 1):
        raise RecipeError(f"{source}: 'cold_start' needs steps >= 0 (0: off), batch_size >= 1, learning_rate > 0 and "
                          f"examples >= 1 or null; got {dataclasses.asdict(cold)}")
    if recipe.data.limit is not None and recipe.data.limit < 1:
        raise RecipeError(f"{source}: 'data.limit' must be at least 1 (or null for every row), got {recipe.data.limit}")
    if not recipe.rewards:
        raise RecipeError(f"{source}: 'rewards' is empty; name at least one reward function (e.g. - correctness)")
    training = {**TRAINING_DEFAULTS, **recipe.training}
    try:
        effective_batch(training, gen.num_generations, num_processes)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    if training.get("beta", 0.0) < 0:
        raise RecipeError(f"{source}: 'training.beta' (the KL weight) must be >= 0, got {training['beta']}")


@dataclass(frozen=True)
class EffectiveBatch:
    """How many completions one optimizer step and one generation round take, over all processes."""

    per_device: int
    processes: int
    accumulation: int
    generation_batch: int  # completions sampled per generation round, all processes together
    num_generations: int

    @property
    def per_step(self) -> int:
        """Completions per optimizer step: per_device x processes x gradient_accumulation_steps."""
        return self.per_device * self.processes * self.accumulation

    def describe(self) -> str:
        questions = self.per_step / self.num_generations
        text = (f"effective batch {self.per_step} completions per optimizer step = {self.per_device} per device x "
                f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.accumulation} gradient accumulation "
                f"({questions:g} question{'' if questions == 1 else 's'} x {self.num_generations} generations)")
        if self.generation_batch != self.per_step:
            text += f"; {self.generation_batch} completions sampled per generation round"
        return text


def effective_batch(training: Mapping[str, Any], num_generations: int, processes: int) -> EffectiveBatch:
    """The batch sizes TRL 1.14.2's GRPOConfig derives from `training` (GRPOConfig fields) on `processes` processes.

    Raises RecipeError, naming the keys to change, where TRL would refuse them: the generation
    batch (per_device x processes x steps_per_generation, or generation_batch_size) must be a
    multiple of the global batch and hold whole groups of num_generations completions.
    """
    per_device = int(training["per_device_train_batch_size"])
    accumulation = int(training.get("gradient_accumulation_steps") or 1)
    global_batch = per_device * processes
    where = f"{per_device} per device x {processes} process{'es' if processes > 1 else ''}"
    if training.get("generation_batch_size") and training.get("steps_per_generation"):
        raise RecipeError("training.generation_batch_size and training.steps_per_generation cannot both be set; keep one")
    if training.get("generation_batch_size"):
        generation_batch = int(training["generation_batch_size"])
        if generation_batch % global_batch:
            raise RecipeError(f"training.generation_batch_size ({generation_batch}) must be a multiple of the global batch "
                              f"({global_batch} = {where})")
    else:
        steps = int(training.get("steps_per_generation") or accumulation)
        generation_batch = global_batch * steps
        where += f" x {steps} steps per generation"
    if generation_batch % num_generations:
        group_sizes = [str(d) for d in range(2, generation_batch + 1) if generation_batch % d == 0][:8]
        raise RecipeError(
            f"generation.num_generations ({num_generations}) must divide the completions sampled per generation round "
            f"({generation_batch} = {where}); set training.per_device_train_batch_size to a multiple of "
            f"{num_generations} (e.g. {num_generations * max(1, per_device // num_generations)})"
            + (f" or generation.num_generations to one of {', '.join(group_sizes)}" if group_sizes else "")
        )
    return EffectiveBatch(per_device, processes, accumulation, generation_batch, num_generations)


# ----------------------------------------------------------------------------- messages


def _did_you_mean(key: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys here: {', '.join(options)}" if len(options) <= 12 else ""


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list, each item {_expected(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if hint is RewardSpec:
        return "a reward name or a mapping with name, weight and kwargs"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
