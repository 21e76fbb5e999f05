"""Training on several processes under `accelerate launch` (or torchrun): who is who, and what all agree on.

grpo_r1 distributes nothing itself. `accelerate launch --config_file recipes/accelerate/X.yaml
-m grpo_r1.train RECIPE.yaml` starts one process per GPU (gloo processes on a CPU) and TRL's
GRPOTrainer, through accelerate, shards the batches, all-reduces the gradients (DDP) or shards
the model (FSDP2, DeepSpeed ZeRO). This module handles what happens around the trainer:

    launch = launch_from_env()           # the launcher's environment, read once (no process group)
    check_launch(recipe, launch)         # engines and backends that cannot run on several processes
    join(launch)                         # the process group, started early through accelerate
    name = agree(launch, value)          # rank 0's value on every process (the run folder name)
    on_main_then_share(launch, check)    # a refusal decided once, raised on every process alike
    barrier(launch)                      # wait until rank 0 has made the run folder

Single-process runs (plain `python -m grpo_r1.train`) see `Launch()`: one process, rank 0, and
every function here does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from grpo_r1.errors import EngineError, GrpoR1Error, ModelError, RecipeError

T = TypeVar("T")

Sharding = Literal["none", "fsdp", "deepspeed"]


@dataclass(frozen=True)
class Launch:
    """How this process was started: one of `world_size` processes, and how the model is spread.

    Attributes:
        world_size: number of training processes (accelerate's num_processes), 1 without a launcher.
        rank: this process's index among them; rank 0 writes the run folder.
        local_rank: its index on this machine (the GPU it uses).
        sharding: "fsdp" (FSDP, either version), "deepspeed", or "none" (DDP or one process).
        fsdp_version: 1 or 2 under FSDP, else None.
        zero_stage: DeepSpeed ZeRO stage under DeepSpeed, else None.
        fsdp_offload: FSDP parameters offloaded to CPU memory.
        cpu: the processes train on the CPU (no CUDA GPU, or training.use_cpu): decided once, here.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    sharding: Sharding = "none"
    fsdp_version: int | None = None
    zero_stage: int | None = None
    fsdp_offload: bool = False
    cpu: bool = field(default_factory=lambda: not torch.cuda.is_available())

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str:
        """Where this process computes: "cpu", or its own GPU ("cuda:<local_rank>")."""
        return "cpu" if self.cpu else f"cuda:{self.local_rank}"

    @property
    def shards_parameters(self) -> bool:
        """True when no process holds the whole model: FSDP or ZeRO-3."""
        return self.sharding == "fsdp" or (self.sharding == "deepspeed" and (self.zero_stage or 0) >= 3)

    def describe(self) -> str:
        """E.g. "2 processes, FSDP2" or "1 process"."""
        if not self.is_distributed:
            return "1 process"
        if self.sharding == "fsdp":
            how = (f"FSDP{self.fsdp_version if self.fsdp_version == 2 else ''}"
                   + (" with CPU offload" if self.fsdp_offload else ""))
        elif self.sharding == "deepspeed":
            how = f"DeepSpeed ZeRO-{self.zero_stage}"
        else:
            how = "DDP"
        return f"{self.world_size} processes, {how}"


def launch_from_env(env: Mapping[str, str] | None = None, *, cpu: bool | None = None) -> Launch:
    """The Launch described by the environment accelerate launch / torchrun give each process.
    `cpu`: train on the CPU; None: when no CUDA GPU is visible."""
    env = os.environ if env is None else env
    world_size = _int(env, "WORLD_SIZE", 1)
    rank = _int(env, "RANK", 0)
    local_rank = _int(env, "LOCAL_RANK", rank)
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return Launch(world_size, rank, local_rank, "fsdp", fsdp_version=_int(env, "FSDP_VERSION", 1),
                      fsdp_offload=_flag(env, "FSDP_OFFLOAD_PARAMS"), cpu=cpu)
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return Launch(world_size, rank, local_rank, "deepspeed",
                      zero_stage=_int(env, "ACCELERATE_DEEPSPEED_ZERO_STAGE", 2), cpu=cpu)
    return Launch(world_size, rank, local_rank, cpu=cpu)


def check_launch(recipe: Any, launch: Launch) -> None:
    """Fail now, with the fix, if the recipe cannot run on this launch's processes."""
    if not launch.is_distributed:
        return
    if recipe.model.backend == "unsloth" or recipe.generation.engine == "unsloth":
        raise ModelError(
            f"Unsloth trains on one GPU only, and this run has {launch.world_size} processes; run it with plain "
            f"`python -m grpo_r1.train`, or use model.backend=transformers with generation.engine=hf or vllm "
            f"under accelerate"
        )
    if recipe.cold_start.steps and launch.shards_parameters:
        raise RecipeError(
            f"cold_start trains each process's whole copy of the model before the trainer shards it, which FSDP and "
            f"ZeRO-3 are there to avoid (this run: {launch.describe()}); set cold_start.steps=0, or use "
            f"recipes/accelerate/ddp.yaml where each process holds the whole model anyway"
        )
    if recipe.generation.engine == "hf-compiled" and launch.shards_parameters:
        raise EngineError(
            f"generation.engine=hf-compiled samples with each process's own model for as many steps as its own rows "
            f"need, which sharded parameters (FSDP, ZeRO-3; this run: {launch.describe()}) cannot follow; use "
            f"generation.engine=hf (TRL keeps the processes in step), or recipes/accelerate/ddp.yaml"
        )
    if recipe.run.auto_fit:
        raise RecipeError(
            f"run.auto_fit measures each candidate on one GPU in a process of its own, and this run has "
            f"{launch.world_size} processes; run python -m grpo_r1.plan RECIPE on one GPU, put the overrides it prints "
            f"into the recipe, and set run.auto_fit=false under accelerate launch"
        )
    if recipe.generation.resample_equal_groups:
        raise RecipeError(
            f"generation.resample_equal_groups runs on one process only: each process would draw its own replacement "
            f"questions and the groups of completions would no longer line up across them (this run: "
            f"{launch.world_size} processes); set generation.resample_equal_groups=0 under accelerate launch"
        )
    if recipe.generation.engine == "vllm" and launch.shards_parameters:
        raise EngineError(
            f"generation.engine=vllm gives each process's vLLM the whole LoRA adapter, but FSDP and ZeRO-3 leave each "
            f"process only a shard of it (this run: {launch.describe()}); use recipes/accelerate/ddp.yaml or "
            f"deepspeed_zero2.yaml, or generation.engine=hf"
        )


def join(launch: Launch) -> None:
    """Start the process group now (accelerate's PartialState), before the trainer does, so that
    processes can agree on things first; on a CPU (`launch.cpu`) the group uses gloo. Nothing
    happens for a single process."""
    if not launch.is_distributed:
        return
    from accelerate import PartialState

    state = PartialState(cpu=launch.cpu)
    if state.num_processes != launch.world_size:
        raise RuntimeError(f"accelerate started {state.num_processes} processes' group but WORLD_SIZE is "
                           f"{launch.world_size}")


def agree(launch: Launch, value: T) -> T:
    """Rank 0's `value`, on every process (a pickled broadcast); `value` itself for one process."""
    if not launch.is_distributed:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def on_main_then_share(launch: Launch, check: Callable[[], T]) -> T:
    """Run `check` on rank 0 only and give its result to every process; a GrpoR1Error it raises
    is raised on every process, so that all of them stop with the same message and none waits
    for the others in a collective. Any other exception is raised again on rank 0 (with its
    traceback) and, on the other processes, as a GrpoR1Error naming it: every process stops."""
    outcome: tuple[str, Any] = ("ok", None)
    crash: Exception | None = None
    if launch.is_main:
        try:
            outcome = ("ok", check())
        except GrpoR1Error as e:
            outcome = ("error", (type(e), str(e)))
        except Exception as e:
            crash, outcome = e, ("crash", f"{type(e).__name__}: {e}")
    outcome = agree(launch, outcome)
    if outcome[0] == "crash":
        if crash is not None:
            raise crash
        error = GrpoR1Error(f"rank 0 stopped with {outcome[1]} (its output has the traceback)")
        error.on_every_process = True  # rank 0 shows its own
        raise error
    if outcome[0] == "error":
        cls, message = outcome[1]
        error = cls(message)
        error.on_every_process = True  # the CLI prints it on rank 0 only
        raise error
    return outcome[1]


def barrier(launch: Launch) -> None:
    """Wait for every process (after rank 0 wrote something the others read)."""
    if launch.is_distributed:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def leave(launch: Launch) -> None:
    """Close the process group at the end of a run (torch warns when a process exits without it)."""
    if not launch.is_distributed:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise RecipeError(f"the environment variable {name}={raw!r} is not a number; the launcher sets it, "
                          "unset it when running one process") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")
