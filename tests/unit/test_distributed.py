"""`accelerate launch` without starting processes: each shipped config read through accelerate's own
launcher code (the environment it would give each process is what grpo_r1 reads), the refusals,
and the global batch pinned to TRL's (two real processes: tests/train/test_two_processes.py).
"""


import os

import pytest

from grpo_r1.errors import EngineError, ModelError, RecipeError
from grpo_r1.launch import Launch, check_launch, launch_from_env
from grpo_r1.recipe import load_recipe
from grpo_r1.trainer.grpo_config import check_training, effective_batch
from tests.helpers import CPU_RECIPE, ROOT

CONFIGS = ROOT / "recipes" / "accelerate"
# ----------------------------------------------------------------------------- no processes started


def accelerate_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file recipes/accelerate/<config>` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / config), "-m", "grpo_r1.train", "recipe.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {**env, "WORLD_SIZE": str(args.num_processes), "RANK": "1", "LOCAL_RANK": "1"}  # torchrun's part


@pytest.mark.parametrize("config, described, shards", [
    ("ddp.yaml", "2 processes, DDP", False),
    ("fsdp2.yaml", "2 processes, FSDP2", True),
    ("deepspeed_zero2.yaml", "2 processes, DeepSpeed ZeRO-2", False),
    ("deepspeed_zero3.yaml", "2 processes, DeepSpeed ZeRO-3", True),
])
def test_each_config_reads_as_meant(config, described, shards):
    launch = launch_from_env(accelerate_env(config))
    assert launch.describe() == described
    assert launch.shards_parameters is shards
    assert (launch.rank, launch.local_rank, launch.is_main) == (1, 1, False)


def test_fsdp2_config_shards_by_layer_in_bf16_without_offload():
    env = accelerate_env("fsdp2.yaml")
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_OFFLOAD_PARAMS"] == "false" and not launch_from_env(env).fsdp_offload
    assert launch_from_env({**env, "FSDP_OFFLOAD_PARAMS": "true"}).describe() == "2 processes, FSDP2 with CPU offload"


def test_no_launcher_is_one_process():
    launch = launch_from_env({})
    assert (launch.world_size, launch.rank, launch.is_main, launch.is_distributed) == (1, 0, True, False)
    with pytest.raises(RecipeError, match="WORLD_SIZE"):
        launch_from_env({"WORLD_SIZE": "two"})


def test_engines_that_cannot_run_on_several_processes_are_refused(tmp_path):
    two = Launch(world_size=2, rank=0)
    unsloth = load_recipe(CPU_RECIPE, ["model.backend=unsloth", "generation.engine=unsloth"])
    with pytest.raises(ModelError, match="Unsloth trains on one GPU only, and this run has 2 processes"):
        check_launch(unsloth, two)
    check_launch(unsloth, Launch())  # one process: the GPU checks elsewhere decide
    # cold start is refused sharded too
    vllm = load_recipe(CPU_RECIPE, ["generation.engine=vllm", "cold_start.steps=0"])
    check_launch(vllm, two)  # DDP: each process has the whole adapter
    for sharded in (Launch(2, 0, 0, "fsdp", fsdp_version=2), Launch(2, 0, 0, "deepspeed", zero_stage=3)):
        with pytest.raises(EngineError, match=r"generation.engine=vllm .*\(this run: 2 processes, "
                                              r"(FSDP2|DeepSpeed ZeRO-3)\); use recipes/accelerate/ddp.yaml"):
            check_launch(vllm, sharded)
    check_launch(vllm, Launch(2, 0, 0, "deepspeed", zero_stage=2))
    compiled = load_recipe(CPU_RECIPE, ["generation.engine=hf-compiled", "cold_start.steps=0"])
    check_launch(compiled, two)
    with pytest.raises(EngineError, match="generation.engine=hf-compiled .* use generation.engine=hf"):
        check_launch(compiled, Launch(2, 0, 0, "fsdp", fsdp_version=2))


def test_dynamic_sampling_is_refused_on_several_processes():
    resampling = load_recipe(CPU_RECIPE, ["generation.resample_equal_groups=2"])
    with pytest.raises(RecipeError, match="resample_equal_groups runs on one process only.*2 processes"):
        check_launch(resampling, Launch(world_size=2, rank=0))
    check_launch(resampling, Launch())


def test_auto_fit_is_refused_on_several_processes():
    fitting = load_recipe(CPU_RECIPE, ["run.auto_fit=true"])
    with pytest.raises(RecipeError, match="run.auto_fit measures each candidate on one GPU.*2 processes.*grpo_r1.plan"):
        check_launch(fitting, Launch(world_size=2, rank=0))
    check_launch(fitting, Launch())


def test_num_generations_divides_the_batch_of_all_processes():
    # 1 question per device: a group of 2 only forms across the 2 processes.
    overrides = ["training.per_device_train_batch_size=1", "generation.num_generations=2"]
    with pytest.raises(RecipeError, match="must divide the completions sampled per generation round"):
        check_training(load_recipe(CPU_RECIPE, overrides))
    recipe = load_recipe(CPU_RECIPE, overrides)
    batch = check_training(recipe, processes=2)
    assert (batch.per_step, batch.generation_batch) == (2, 2)
    with pytest.raises(RecipeError, match=r"\(3 = 1 per device x 3 processes x 1 steps per generation\)"):
        effective_batch(recipe.training, 2, 3)
    big = effective_batch({"per_device_train_batch_size": 3, "gradient_accumulation_steps": 4}, 6, 2)
    assert big.per_step == 24 and "6 generations" in big.describe() and "4 questions" in big.describe()


def _trl_batch(tmp_path, processes, num_generations, training):
    """TRL's own derivation (GRPOConfig.__post_init__) as `processes` processes would see it, or None where TRL
    refuses."""
    from trl import GRPOConfig

    class OnProcesses(GRPOConfig):
        @property
        def world_size(self):
            return processes

    try:
        args = OnProcesses(output_dir=str(tmp_path), num_generations=num_generations, use_cpu=True, report_to="none",
                           **training)
    except ValueError:
        return None
    return args.generation_batch_size, args.steps_per_generation


def test_effective_batch_is_trls_over_a_grid_of_shapes_and_process_counts(tmp_path):
    checked = refused = 0
    for processes in (1, 2, 3):
        for num_generations in (2, 3, 4, 6):
            for per_device in (1, 2, 3, 4, 6):
                for extra in ({}, {"gradient_accumulation_steps": 3}, {"steps_per_generation": 2},
                              {"generation_batch_size": 12}, {"generation_batch_size": 8}):
                    training = {"per_device_train_batch_size": per_device, **extra}
                    trl = _trl_batch(tmp_path, processes, num_generations, training)
                    try:
                        ours = effective_batch(training, num_generations, processes)
                    except RecipeError:
                        ours = None
                    shape = (processes, num_generations, training)
                    if trl is None:
                        assert ours is None, shape
                        refused += 1
                        continue
                    assert ours is not None, shape
                    assert ours.generation_batch == trl[0], shape
                    assert ours.generation_batch // (per_device * processes) == trl[1], shape
                    checked += 1
    assert checked > 50 and refused > 50  # the grid exercises both sides of TRL's rule
    with pytest.raises(RecipeError, match="multiple of the global batch"):
        effective_batch({"per_device_train_batch_size": 4, "generation_batch_size": 6}, 2, 1)


SHARE_SCRIPT = """
import sys
from grpo_r1.errors import GrpoR1Error
from grpo_r1.launch import join, launch_from_env, leave, on_main_then_share

launch = launch_from_env(cpu=True)
join(launch)

def check():
    raise ValueError("disk quota exceeded while planning")

try:  # as grpo_r1.train does: the group is closed on the way out (without it gloo may abort a process at exit)
    on_main_then_share(launch, check)
except GrpoR1Error as e:
    print(f"rank {launch.rank}: GrpoR1Error: {e}", flush=True)
    sys.exit(2)
except ValueError as e:
    print(f"rank {launch.rank}: ValueError: {e}", flush=True)
    sys.exit(1)
finally:
    leave(launch)
print(f"rank {launch.rank}: went on", flush=True)
"""


def test_an_unexpected_error_on_rank_0_stops_every_process(tmp_path):
    """Before, only GrpoR1Error crossed to the other ranks: rank 1 waited in the broadcast for good."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", SHARE_SCRIPT], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a process is still waiting for rank 0")
        outs.append((proc.returncode, out))
    assert outs[0] == (1, "rank 0: ValueError: disk quota exceeded while planning\n"), outs
    assert outs[1] == (2, "rank 1: GrpoR1Error: rank 0 stopped with ValueError: disk quota exceeded while planning "
                          "(its output has the traceback)\n"), outs
