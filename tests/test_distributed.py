"""`accelerate launch` with two processes: one run folder, one adapter, one W&B run, the global batch.

The real thing runs on the CPU: `accelerate launch --config_file recipes/accelerate/ddp.yaml
--num_processes 2 -m grpo_r1.train ...` starts two processes that train the real SmolLM2 over
gloo (accelerate turns the DDP config into gloo processes where there is no GPU). The other
configs (FSDP2, DeepSpeed) need GPUs; here they are checked through accelerate's own launcher
code: the environment it would give each process is what grpo_r1 reads.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_r1.distributed import Launch, check_launch, launch_from_env
from grpo_r1.errors import EngineError, ModelError, RecipeError
from grpo_r1.recipe import effective_batch, load_recipe
from grpo_r1.tracking import read_metrics
from tests.wandb_files import read_offline_run

ROOT = Path(__file__).parent.parent
CPU_RECIPE = ROOT / "recipes" / "smollm2_gsm8k_cpu.yaml"
CONFIGS = ROOT / "recipes" / "accelerate"
ROWS = 100  # arithmetic problems: an epoch is ROWS x num_generations completions

LENGTH_REWARD = '''
def length_bonus(prompts, completions, **kwargs):
    return [min(len(c[0]["content"]), 200) / 200 for c in completions]
'''


def launch_two(run_dir: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """grpo_r1.train on two processes under accelerate launch with the shipped DDP config."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "0", "-m", "grpo_r1.train", str(CPU_RECIPE),
           "training.max_steps=2", "generation.max_completion_length=16", "generation.num_generations=2",
           "training.per_device_train_batch_size=2", f"data.arithmetic_examples={ROWS}", "cold_start.steps=0",
           f"run.output_dir={run_dir}", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    (work / "my_rewards.py").write_text(LENGTH_REWARD)
    run_dir = work / "run"
    rewards = f"rewards=[{{name: {work / 'my_rewards.py'}:length_bonus}}, graded_format]"
    proc = launch_two(run_dir, "training.learning_rate=1e-3", "logging.run_name=ddp-run", "logging.tags=[ci, ddp]", rewards)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir, proc


@pytest.mark.slow
def test_two_processes_train_one_adapter(two_process_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo_r1.model import resolve_model_path

    run_dir, proc = two_process_run
    assert proc.stdout.count("2 processes, DDP; effective batch 4 completions per optimizer step = 2 per device x 2 processes") == 1
    assert proc.stdout.count("2 steps done") == 1, "only rank 0 reports"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("adapter")) == ["adapter"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m")), run_dir / "adapter")
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values()), "the adapter learnt nothing"
    assert torch.isfinite(torch.stack([p.abs().max() for p in lora_b.values()])).all()
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_each_step_logged_once_over_the_global_batch(two_process_run):
    run_dir, _ = two_process_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2], "rank 1 must not write metrics.jsonl"
    # The epoch advances by the global batch (2 per device x 2 processes) per step; one process would make it half.
    assert records[-1]["epoch"] == pytest.approx(2 * 4 / (ROWS * 2))
    for record in records:
        assert isinstance(record["rewards/length_bonus/mean"], float) and "kl" in record
    assert (run_dir / "summary.json").is_file() and (run_dir / "plots" / "rewards.png").is_file()
    assert (run_dir / "recipe.yaml").is_file()


@pytest.mark.slow
def test_one_wandb_run_from_rank_zero(two_process_run):
    run_dir, _ = two_process_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = read_offline_run(next(runs[0].glob("run-*.wandb")))
    assert run.name == "ddp-run" and run.tags == ["ci", "ddp"]
    assert "train/rewards/length_bonus/mean" in run.history_keys


@pytest.mark.slow
def test_existing_run_folder_refused_once_without_hanging(two_process_run):
    run_dir, _ = two_process_run
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    proc = launch_two(run_dir, timeout=300)  # a process waiting for the other would run into the timeout
    assert proc.returncode != 0
    assert proc.stderr.count("error: run folder") == 1, proc.stderr[-3000:]
    assert "already holds a run; pass --overwrite" in proc.stderr
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


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
    vllm = load_recipe(CPU_RECIPE, ["generation.engine=vllm", "cold_start.steps=0"])  # cold start is refused sharded too
    check_launch(vllm, two)  # DDP: each process has the whole adapter
    for sharded in (Launch(2, 0, 0, "fsdp", fsdp_version=2), Launch(2, 0, 0, "deepspeed", zero_stage=3)):
        with pytest.raises(EngineError, match=r"generation.engine=vllm .*\(this run: 2 processes, (FSDP2|DeepSpeed ZeRO-3)\); use recipes/accelerate/ddp.yaml"):
            check_launch(vllm, sharded)
    check_launch(vllm, Launch(2, 0, 0, "deepspeed", zero_stage=2))
    compiled = load_recipe(CPU_RECIPE, ["generation.engine=hf-compiled", "cold_start.steps=0"])
    check_launch(compiled, two)
    with pytest.raises(EngineError, match="generation.engine=hf-compiled .* use generation.engine=hf"):
        check_launch(compiled, Launch(2, 0, 0, "fsdp", fsdp_version=2))


def test_num_generations_divides_the_batch_of_all_processes():
    # 1 question per device: a group of 2 only forms across the 2 processes.
    overrides = ["training.per_device_train_batch_size=1", "generation.num_generations=2"]
    with pytest.raises(RecipeError, match="must divide the completions sampled per generation round"):
        load_recipe(CPU_RECIPE, overrides)
    recipe = load_recipe(CPU_RECIPE, overrides, num_processes=2)
    batch = effective_batch(recipe.training, recipe.generation.num_generations, 2)
    assert (batch.per_step, batch.generation_batch) == (2, 2)
    with pytest.raises(RecipeError, match=r"\(3 = 1 per device x 3 processes x 1 steps per generation\)"):
        effective_batch(recipe.training, 2, 3)
    big = effective_batch({"per_device_train_batch_size": 3, "gradient_accumulation_steps": 4}, 6, 2)
    assert big.per_step == 24 and "6 generations" in big.describe() and "4 questions" in big.describe()


def test_effective_batch_agrees_with_trl_on_one_process(tmp_path):
    from trl import GRPOConfig

    for training in ({"per_device_train_batch_size": 4},
                     {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3},
                     {"per_device_train_batch_size": 4, "steps_per_generation": 2},
                     {"per_device_train_batch_size": 2, "generation_batch_size": 8}):
        args = GRPOConfig(output_dir=str(tmp_path), num_generations=2, use_cpu=True, report_to="none", **training)
        assert effective_batch(training, 2, 1).generation_batch == args.generation_batch_size, training
    with pytest.raises(RecipeError, match="multiple of the global batch"):
        effective_batch({"per_device_train_batch_size": 4, "generation_batch_size": 6}, 2, 1)
