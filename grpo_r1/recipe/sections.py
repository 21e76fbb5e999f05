"""The recipe's sections: one dataclass per section, every key with its default and meaning.

This file is the key reference. A recipe has these sections:

    model       which model to load and how (backend, dtype, quantisation)
    lora        the LoRA adapter that is trained
    data        where the questions come from and how prompts are built
    rewards     the reward functions, each with a weight
    cold_start  optional supervised steps on formatted reference solutions before GRPO
    generation  the engine that samples completions and its sampling settings
    training    any field of TRL's GRPOConfig (checked against it by grpo_r1.trainer.grpo_config)
    logging     the trackers that get the metrics (W&B, TensorBoard, ...), run name, W&B project and tags
    guards      learning-signal checks that warn, or stop the run, when GRPO cannot learn
    run         run folder, seed and the worst-case preflight step
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewards import BUILTIN_REWARDS, SEED_REWARDS
from rewards.layout import SYSTEM_PROMPT, Layout, layout_from

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    """The base model. `name_or_path` is a built-in name (see `grpo_r1.model.builtin`),
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
    # True: the training forwards (policy, old and reference log-probabilities) run each micro-batch's rows
    # packed into one sequence without padding (grpo_r1.trainer.packing); transformers backend, TRL's loss.
    # "shared_prompt": packed too, and the completions of a question share one pass over its prompt (needs
    # SDPA or eager attention; on a GPU it runs through FlexAttention with a block mask).
    padding_free: bool | Literal["shared_prompt"] = False
    # Tokenizer folder or hub id when it differs from the model's.
    tokenizer: str | None = None
    # The chat template the prompts are formatted with; None: the tokenizer's own (a tokenizer without one
    # is refused before the weights load). "plain": "<system>\n\nQuestion: ...\nAnswer: ...<eos>", for base
    # models; or the path of a .jinja template (relative to the recipe's folder). See grpo_r1.model.templates.
    chat_template: str | None = None
    trust_remote_code: bool = False
    # "random": no weights are read; `architecture` (see grpo_r1.model.architectures) is built at random
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
    system_prompt: str = SYSTEM_PROMPT
    # Keep at most this many rows (after shuffling with the run's seed).
    limit: int | None = None
    # The arithmetic generator: how many problems, and the fewest and most operations in one problem.
    arithmetic_examples: int = 2000
    arithmetic_max_ops: int = 2
    arithmetic_min_ops: int = 1
    # Up to this many sentences per problem whose numbers play no part in the answer.
    arithmetic_distractors: int = 0
    # "plain": one wording per operation; "varied": several GSM8K-like ones, and buying packs of
    # several items (a product, then a sum) as one more operation.
    arithmetic_wording: Literal["plain", "varied"] = "plain"


@dataclass
class RewardSpec:
    """One reward function. `name` is a built-in name, "package.module:function" or
    "path/to/file.py:function". With `kwargs`, the named object is a factory called with them."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Seconds one call (a whole batch of completions) may take; past it the run stops naming the reward.
    # 0: no limit. The call runs in a worker thread that is abandoned on expiry and never keeps the
    # process alive.
    timeout_s: float = 60.0


def _seed_rewards() -> list[RewardSpec]:
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
    # Dynamic sampling (DAPO): groups whose completions all scored alike (zero advantages, no signal)
    # are replaced by groups of other questions, in up to this many more generation rounds per step;
    # 0: off. One process only. See grpo_r1/trainer/dynamic_sampling.py.
    resample_equal_groups: int = 0


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


# The trackers `logging.report_to` may name (transformers' integrations of them log TRL's metrics).
REPORTERS = ("wandb", "tensorboard", "trackio", "mlflow")


@dataclass
class LoggingConfig:
    """Where metrics go. metrics.jsonl in the run folder is always written."""

    # The trackers that get every logged metric: a list of REPORTERS names ([wandb, tensorboard]), or one
    # name, or "none". "tensorboard" writes event files into <run folder>/tensorboard (view them with
    # `tensorboard --logdir <run folder>/tensorboard`); trackio logs locally unless training.trackio_space_id
    # names a Space; mlflow logs where MLFLOW_TRACKING_URI says. A tracker whose package is not installed is
    # refused before the model loads. Held as a list once built (a single name becomes a one-name list).
    report_to: str | list[str] = field(default_factory=lambda: ["wandb"])
    # The W&B and Trackio project, and W&B's tags; run_name (default <recipe>-<date>) names the run (W&B,
    # Trackio, MLflow) and its folder, runs/<run_name>.
    project: str = "grpo_r1"
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: WANDB_MODE from the environment if set, else "online" when W&B has an API key,
    # else "offline" (files in the run folder, sync later with `wandb sync`).
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    logging_steps: int = 1
    # What the console shows per logged step: "compact", one line (step, reward and each reward's
    # mean, correctness rate, KL, length, truncation, s/step, ETA) under the progress bar; "full",
    # TRL's whole dictionary. metrics.jsonl and the trackers get every metric either way.
    console: Literal["compact", "full"] = "compact"
    # Every this many steps, a group of completions with their rewards goes to completions.jsonl
    # in the run folder and to W&B's table "completions/history" (when report_to has wandb); 0: never.
    completions_every: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]

    @property
    def reporters(self) -> list[str]:
        """The trackers the run logs to: report_to without "none"."""
        return [name for name in self.report_to if name != "none"]


@dataclass
class RunConfig:
    """The run folder and seed. `output_dir` defaults to runs/<run name>."""

    output_dir: str | None = None
    seed: int = 42
    # One training step at the largest shape the recipe allows, before the run folder is made, so
    # an out-of-memory shows at once (see grpo_r1/trainer/preflight.py). "auto": on when one process
    # trains on a CUDA GPU (not under accelerate launch, not with training.use_cpu).
    preflight: bool | Literal["auto"] = "auto"
    # Before training, try the memory and speed levers (micro-batch, checkpointing, Liger's loss, the
    # merged decoder) each in a process of its own and train with the fastest that fits this GPU
    # (grpo_r1/planning.py; `python -m grpo_r1.plan` prints the same table). One process only, new runs only.
    auto_fit: bool = False


# False too: YAML 1.1 reads a bare `off` as false.
GuardAction = Literal["warn", "stop", "off", False]


@dataclass
class GuardsConfig:
    """Checks on the metrics TRL logs each step (see grpo_r1/trainer/guards.py). Each guard warns (a
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
OWNED_ELSEWHERE = {
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
    "project": "logging.project",
    "logging_steps": "logging.logging_steps",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
}

# GRPOConfig fields that hold a secret, with the environment variable that carries it instead:
# a recipe is saved into the run folder and W&B's config, so it never holds one.
SECRETS_FROM_ENV = {"hub_token": "HF_TOKEN"}

# Defaults grpo_r1 gives GRPOConfig fields where TRL's own default suits a LoRA run badly.
TRAINING_DEFAULTS: dict[str, Any] = {
    "beta": 0.04,  # a KL penalty against the base model (the adapter disabled)
    "learning_rate": 5e-6,
    "per_device_train_batch_size": 8,
    "max_steps": 100,
    "save_steps": 50,  # a checkpoint (adapter, optimizer, RNG, data position) every 50 steps
    "save_total_limit": 2,  # keep the newest two complete checkpoints (grpo_r1/run/checkpoints.py)
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
    # GRPOConfig fields; grpo_r1's TRAINING_DEFAULTS are filled in however the recipe is made
    # (__post_init__), so this holds every value the run uses (grpo_r1.trainer.grpo_config checks it
    # against TRL).
    training: dict[str, Any] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The recipe file's folder: relative reward file paths are looked up there first.
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    # Where it was read from, for messages about it (the file's path; "recipe" when built in Python).
    source: str = field(default="recipe", compare=False, repr=False)

    def __post_init__(self) -> None:
        self.training = {**TRAINING_DEFAULTS, **self.training}

    @property
    def layout(self) -> Layout:
        """The answer layout the recipe's built-in rewards score: their `tags` setting, the seed's
        `<reasoning>`/`<answer>` by default. The cold start writes its targets in it; the recipe
        check makes the built-ins agree on it and the system prompt ask for it."""
        tags = [spec.kwargs["tags"] for spec in self.rewards if spec.name in BUILTIN_REWARDS and "tags" in spec.kwargs]
        return layout_from(tags[0]) if tags else layout_from(None)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, every default filled in (what `recipe.yaml` in a run folder holds)."""
        out = dataclasses.asdict(self)
        out.pop("base_dir")
        out.pop("source")
        return out
